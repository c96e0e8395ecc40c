"""Train the example model: scikit-learn's digits SVC, as in MLServer's getting-started example.

    python examples/train_digits.py OUTPUT_DIR

writes OUTPUT_DIR/model.joblib. Kept free of f-strings and new syntax so the same script trains the
model inside an old environment (Python 3.8, scikit-learn 0.24.2).
"""

import os
import sys

import joblib
from sklearn import datasets, svm
from sklearn.model_selection import train_test_split


def train(output_dir):
    digits = datasets.load_digits()
    data = digits.images.reshape((len(digits.images), -1))
    x_train, _, y_train, _ = train_test_split(data, digits.target, test_size=0.5, shuffle=False)
    classifier = svm.SVC(gamma=0.001)
    classifier.fit(x_train, y_train)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "model.joblib")
    joblib.dump(classifier, path)
    return path


if __name__ == "__main__":
    print(train(sys.argv[1] if len(sys.argv) > 1 else "."))

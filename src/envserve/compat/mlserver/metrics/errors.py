from ..errors import MLServerError


class InvalidModelContext(MLServerError):
    def __init__(self) -> None:
        super().__init__(
            "Custom metrics can only be logged within the context of a model (in its load or predict)"
        )


class MetricNotFound(MLServerError):
    def __init__(self, name: str, collector: object = None) -> None:
        super().__init__("Metric %s not found" % name)

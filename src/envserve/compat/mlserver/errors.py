"""MLServer's errors (``mlserver.errors``): raise them from a runtime and the client gets their status."""

__all__ = ["InferenceError", "InvalidModelURI", "MLServerError", "ModelNotFound", "ModelNotReady"]


class MLServerError(Exception):
    def __init__(self, msg: str, status_code: int = 500) -> None:
        super().__init__(msg)
        self.status_code = status_code


class InferenceError(MLServerError):
    def __init__(self, msg: str, status_code: int = 400) -> None:
        super().__init__(msg, status_code)


class InvalidModelURI(MLServerError):
    def __init__(self, name: str, model_uri: str = "") -> None:
        msg = "Invalid URI specified for model %s" % name
        if model_uri:
            msg += " (%s)" % model_uri
        super().__init__(msg, 422)


class ModelNotFound(MLServerError):
    def __init__(self, name: str, version: str = "") -> None:
        super().__init__(
            "Model %s%s not found" % (name, " with version %s" % version if version else ""), 404
        )


class ModelNotReady(MLServerError):
    def __init__(self, name: str, version: str = "") -> None:
        super().__init__(
            "Model %s%s is not ready yet." % (name, " with version %s" % version if version else ""), 400
        )

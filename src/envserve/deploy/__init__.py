"""Kubernetes deployment: manifests (Seldon Core, KServe, plain Kubernetes), platform default images,
validation and the wizard. A side layer: it sees settings and errors, never the server or workers."""

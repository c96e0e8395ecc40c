"""Container images: a Dockerfile with the model environments prepared at build time, the build itself
(docker, podman or buildah), SBOMs and vulnerability scans. A side layer: settings and errors only."""

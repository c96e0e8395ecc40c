"""Worker processes for models in their own environments: the IPC format, the worker entry point
(runs inside the environment) and the server-side pool that supervises them."""

"""Real servers in subprocesses: PyTriton and the stock tritonserver, the facade under uvicorn, Redis,
the supervisor, the fault-injection suite and a bounded Locust run."""

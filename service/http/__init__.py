"""The HTTP layer under the app: uvicorn's protocol with limits and deadlines, and the listening socket."""

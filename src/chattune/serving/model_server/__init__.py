"""One model-server instance: an engine behind `/score` and OpenAI's chat API.

`app.create_app` builds it, `router` holds the routes, `service.ModelService` the work,
`schemas` the wire models, `engine`/`kvcache`/`chat` the generation; `python -m
chattune.serving.model_server` runs it (`cli.py`)."""

"""`tlcli serve`: a checkpoint behind HTTP (needs the serve extra: fastapi, uvicorn, python-multipart)."""

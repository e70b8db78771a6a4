"""Serving what the pipeline built: image and text queries over HTTP, and a web page.

``bundle`` builds and reads the service bundle of one (model, search) from the pipeline's
outputs; ``engine`` answers queries with the model, index and database loaded once;
``batching`` groups concurrent image queries into one forward pass and one search;
``text`` holds the two text engines; ``upload`` the bounded reading and decoding of
uploads; ``app`` the FastAPI application and its page; ``server`` the command line
(``vprflow serve``, ``python -m vprflow.serve``). Importing the package imports no web
framework and no torch.
"""

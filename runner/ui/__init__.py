"""`runner ui`: a local web app over the same commands and run directories as the CLI. The backend
(Starlette) calls runner's own modules (config, plan.lint, importers, serve.engine) and starts
`runner train` / `eval` / `predict` / `merge` / `export` / `push` as subprocesses; the front end is
plain ES modules and SVG in `static/`, served from the package (no build step, no network)."""

"""``fedge dashboard``: a read-only live web page of an orchestrator database.

:mod:`.queries` reads the rows (one read snapshot, never a write), :mod:`.snapshot` turns them
into the JSON the page polls, :mod:`.app` is the Starlette application (token check, security
headers, static files) and :mod:`.serve` runs it under uvicorn. The page itself (``static/``)
draws its charts with uPlot, vendored in ``static/vendor/``.
"""

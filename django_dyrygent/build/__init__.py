"""Building a workflow's rows: validate a draft and save it in one transaction.

``save`` checks everything a column or a Celery message cannot hold and writes
the workflow, its nodes and edges; ``copywriter`` is PostgreSQL's COPY writer
for the nodes and edges. The model classes are handed in by the caller (the
model's run method imports this package lazily), so nothing here imports
``models`` at run time; of the engine only ``engine.sql`` (the statements'
text). The engine never imports this package.
"""

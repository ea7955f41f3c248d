"""Building a workflow's rows: validate a draft and save it in one transaction.

``save`` checks everything a column or a Celery message cannot hold and writes
the workflow, its nodes and edges; ``copywriter`` is PostgreSQL's COPY writer
for the nodes and edges. Imports the models; the engine never imports this
package.
"""

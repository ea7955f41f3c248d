"""The DAG as a picture: read a workflow's rows, lay them out, draw the SVG.

``items`` is the vocabulary (boxes, edges, labels, sizes) and ``layout`` the
loading, collapsing, layered layout and SVG. Pure Python over two bulk
queries; the admin and the ``dyrygent_graph`` command draw through it.
"""

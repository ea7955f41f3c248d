from celery import chain, chord, group, shared_task


@shared_task
def add(x, y):
    return x + y


@shared_task
def total(values):
    return sum(values)


def workflow():
    """A chain into a chord: every kind of edge the package turns into rows."""
    return chain(add.si(1, 2), chord(group(add.si(i, i) for i in range(4)), total.s()))

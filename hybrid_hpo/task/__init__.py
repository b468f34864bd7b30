"""Tasks: the model, data, loss and metrics a run trains on (see :mod:`hybrid_hpo.task.task`)."""
from hybrid_hpo.task.factory import TaskSource, load_factory, resolve_task
from hybrid_hpo.task.check import check_task
from hybrid_hpo.task.splits import make_splits, metric_names
from hybrid_hpo.task.task import ExampleLoss, Task, TaskFactory, accuracy, cross_entropy

__all__ = ["ExampleLoss", "Task", "TaskFactory", "TaskSource", "accuracy", "check_task", "cross_entropy",
           "load_factory", "make_splits", "metric_names", "resolve_task"]

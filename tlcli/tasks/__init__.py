"""Tasks: one module per task, each a tlcli.tasks.base.Task (the contract is written there).

Adding a task: a module here with a Task subclass, exported below, and conf/task/<name>.yaml
whose _target_ names it (plus its line in tlcli.trust's allowlist, which a test compares with conf/).
"""

from tlcli.tasks.base import Report, Task
from tlcli.tasks.classification import Classification, MultiLabel
from tlcli.tasks.regression import Regression
from tlcli.tasks.segmentation import Segmentation
from tlcli.tasks.token_classification import TokenClassification

__all__ = ["Classification", "MultiLabel", "Regression", "Report", "Segmentation", "Task", "TokenClassification"]

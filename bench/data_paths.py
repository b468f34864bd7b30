"""In-memory tensors versus a DataLoader-read Dataset: the same bilevel run on digits, timed.

The built-in digits task (MLP [512, 256], one weight decay per weight) runs once as the library
holds it (a TensorDataset: the fast path, batches by indexing) and once with the very same splits
wrapped in a plain map-style Dataset (read through torch's DataLoader with 0 and 2 workers). The
loop chooses every batch by position, so all three must report identical metrics; the script
checks that and prints the wall time of each relative to the tensor path (interleaved repeats):

    python bench/data_paths.py [--epochs 3] [--repeats 3] [--threads 1]
"""
from __future__ import annotations

import argparse

import common  # noqa: F401 - sets OMP_WAIT_POLICY before torch is imported
import torch
from torch.utils.data import Dataset

from hybrid_hpo import Task
from hybrid_hpo.bilevel import BilevelTrainer
from hybrid_hpo.config import RunConfig
from hybrid_hpo.task.builtin import builtin_task


class Examples(Dataset):
    """(x_i, y_i) of two tensors, one example per __getitem__ (what a user's Dataset does)."""

    def __init__(self, tensors: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.x, self.y = tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def as_dataset_task(config: dict) -> Task:
    task = builtin_task(config)
    return Task(model=task.model, data=Examples(task.data.tensors), val=Examples(task.val.tensors),
                test=Examples(task.test.tensors), num_classes=task.num_classes, name="digits-dataset")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    args.repeats = min(args.repeats, 3)
    device = common.header(args, "tensor path vs DataLoader path, digits MLP [512, 256], per-weight decay")
    config = RunConfig.from_mapping({"epochs": args.epochs, "device": str(device)})
    runs = {
        "tensors": lambda: BilevelTrainer(config).fit(progress=False),
        "dataloader, 0 workers": lambda: BilevelTrainer(config, task=as_dataset_task).fit(progress=False),
        "dataloader, 2 workers": lambda: BilevelTrainer(RunConfig.from_mapping({**config.to_dict(), "num_workers": 2}),
                                                        task=as_dataset_task).fit(progress=False),
    }
    histories = {name: [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in run()] for name, run in runs.items()}
    same = all(history == histories["tensors"] for history in histories.values())
    print(f"identical metrics on all paths ({args.epochs} epochs): {same}")
    times = common.interleaved(runs, args.repeats, device, warmup=0)
    for name, ts in times.items():
        print(f"{name:>22}: {common.median_ms(ts) / 1e3:6.2f} s per run   "
              f"ratio to tensors {common.ratio(ts, times['tensors'])}")
    common.footer()
    if not same:
        raise SystemExit("the paths disagree")


if __name__ == "__main__":
    main()

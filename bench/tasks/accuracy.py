"""The accuracy task: top-1/top-5 of the trained model on the test split, with the training
curves and throughput of the run that produced it."""
from __future__ import annotations

from bench.registry import TASKS
from bench.tasks.base import Metric, RunContext, Task, TaskResult
from bench.train import evaluate


class AccuracyTask(Task):
    name = "accuracy"
    needs_training = True

    def run(self, ctx: RunContext) -> TaskResult:
        scores = evaluate(ctx.model.deploy(), ctx.data.test, ctx.recipe.eval_batch_size, ctx.device)
        split = {"split": "test", "images": len(ctx.data.test)}
        history = ctx.history or {}
        metrics = [Metric("top1", scores["top1"], "%", split),
                   Metric("top5", scores["top5"], "%", split),
                   Metric("test_loss", scores["loss"], "nats", split)]
        if history:
            metrics += [Metric("train_time", history["seconds"], "s",
                               {"device": str(ctx.device), "epochs": ctx.recipe.epochs}),
                        Metric("train_throughput", history["images"] / max(history["seconds"], 1e-9),
                               "images/s", {"device": str(ctx.device),
                                            "batch_size": ctx.recipe.batch_size})]
        curves = {k: history[k] for k in ("train_loss", "train_top1", "test_top1",
                                          "holdout_top1", "lr") if history.get(k)}
        return TaskResult(metrics, curves)


TASKS.add("accuracy", AccuracyTask(), "top-1/top-5 accuracy (%) on the test split, training curves",
          order=0)

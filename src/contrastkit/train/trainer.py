"""The Trainer: one config -> a run directory with a trained model, its metrics and its report.

Run directory:
    config.yaml      the resolved config
    log.csv          step, epoch, loss, scale, (bias,) lr, samples_per_s, elapsed_s
    metrics.json     final metrics, flat keys (``retrieval/i2t_R@1``, ``zeroshot/top1``, ...)
    checkpoints/     step-NNNNNN/ (safetensors + JSON), the newest ``train.keep_checkpoints``
    eval/            similarity matrix, example retrievals, thumbnails (for the report)
    report.html      the offline report
    data_issues.txt  the bad records skipped, when there were any
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from contrastkit.data import BadRecordLog, Source
from contrastkit.distributed import (
    agree_on_step,
    all_reduce_mean,
    gather_objects,
    get_rank,
    get_world_size,
)
from contrastkit.errors import ContrastkitError
from contrastkit.train.auxiliary import AuxiliaryLosses, AuxLoss
from contrastkit.train.checkpoint import (
    check_resumable,
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    remove_incomplete,
    restore,
    save_checkpoint,
    write_json_atomic,
)
from contrastkit.train.config import Config, ConfigError
from contrastkit.train.defense import AUGMENTED_VIEWS, defense_state_tensors, restore_defense_state
from contrastkit.train.evaluate import Embedder, evaluate_paired, evaluate_probe, to_device, write_artifacts
from contrastkit.train.gradcache import gradcache_step
from contrastkit.train.objective import build_objective, flatten_views
from contrastkit.train.parallel import (
    average_loss_gradients,
    check_every_parameter_learns,
    claim_run_dir,
    gather_bad_record_examples,
    rank_rng_tensors,
    rank_zero_first,
    restarted_into,
    restore_rank_rng,
    seed_rank,
    torchrun_job,
    wrap_model,
)
from contrastkit.train.pipeline import (
    SECOND_CAPTION,
    TOKENIZER_FILE,
    BatchStream,
    build_source,
    retrieval_keys,
    text_aliases,
)
from contrastkit.train.progress import Progress
from contrastkit.train.runlog import RunLog
from contrastkit.train.setup import build_run_model, learning_rate, resolve_device, seed_everything
from contrastkit.train.warmstart import copy_init_tokenizer, init_weights_from


class TrainingError(ContrastkitError, RuntimeError):
    """Training cannot go on (a non-finite loss, a finished run asked to resume ...)."""


class Trainer:
    """Train, checkpoint, evaluate and report one run.

    Under ``torchrun`` (a process group initialised by the caller, see
    ``contrastkit.distributed.init_from_env``) every rank takes its slice of each global batch of
    ``train.batch_size``, the model is wrapped in DDP and the loss spans the ranks
    (``loss.distributed``); rank 0 alone writes the log, checkpoints, metrics and report. When
    torchrun restarts the workers (``--max-restarts``), they resume from the newest checkpoint.

    Args:
        config: a validated ``Config``.
        run_dir: the output folder (created).
        resume: continue from the newest checkpoint in ``run_dir``.
        aux_losses: name -> (weight, loss(embeddings, batch) -> 0-d tensor), terms added to the
            contrastive loss that share its encoders (e.g. BindCLIP's denoising loss); an
            ``nn.Module`` loss is trained and checkpointed with the model. See
            ``contrastkit.train.auxiliary``.
    """

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        resume: bool = False,
        aux_losses: Mapping[str, tuple[float, AuxLoss]] | None = None,
    ) -> None:
        created = not Path(run_dir).exists()
        try:
            self._setup(config, run_dir, resume, aux_losses)
        except BaseException:  # a refused config or data set leaves no half-made run folder behind
            if created and get_rank() == 0 and not list_checkpoints(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise

    def _setup(
        self,
        config: Config,
        run_dir: str | Path,
        resume: bool,
        aux_losses: Mapping[str, tuple[float, AuxLoss]] | None,
    ) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        self.rank, self.world = get_rank(), get_world_size()
        self.is_main = self.rank == 0
        self.device = resolve_device(config.train.device)
        if self.world > config.train.batch_size:
            raise ConfigError(
                f"train.batch_size: {config.train.batch_size} is the global batch and cannot be split "
                f"over {self.world} processes; raise it."
            )
        existing = list_checkpoints(self.run_dir)
        job = torchrun_job()
        # torchrun restarted this job's workers: continue from the checkpoints *this job* wrote
        self.restarted = bool(existing) and restarted_into(self.run_dir, job)
        resume = resume or self.restarted
        self.resume = resume
        if resume and not existing:
            raise TrainingError(
                f"--resume: {self.run_dir} has no checkpoint to resume from; drop --resume to start afresh."
            )
        if existing and not resume:
            raise TrainingError(
                f"{self.run_dir} already holds a run (checkpoints up to {existing[-1].name}); continue it "
                f"with --resume, or train into another --out."
            )
        seed_everything(config.seed)
        self.train_source = build_source(config.data.train, "train", stream=True, seed=config.seed)
        self.eval_source = None if config.data.eval is None else build_source(config.data.eval, "eval")
        with rank_zero_first():  # rank 0 writes the run folder and tokenizer, the others read them
            if self.is_main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                claim_run_dir(self.run_dir, job)
                if not resume:
                    copy_init_tokenizer(config, self.run_dir)
            self.model, self.tokenizer = build_run_model(config, self.train_source, self.run_dir)
        if config.train.init_from is not None and not resume:  # resuming restores its own weights
            init_weights_from(self.model, config.train.init_from)
        seed_rank(config.seed)
        self.model.to(self.device)
        self.parallel_model = wrap_model(self.model, self.device)
        missing = [m for m in self.model.modalities if m not in self.train_source.modalities]
        if missing:
            raise ConfigError(
                f"model.towers: modalities {missing} are not in the training data "
                f"({self.train_source.name}: {list(self.train_source.modalities)})."
            )
        self.objective = build_objective(config, self.model)
        self.aux = AuxiliaryLosses(aux_losses, self.device)
        aux_columns = [f"aux_{name}" for name in self.aux.names]
        self.run_log = RunLog(self.run_dir, aux_columns, config.train.steps, config.train.tensorboard)
        self.logs_scale = self.objective.uses_scale
        decay = config.optim.weight_decay
        self.optimizer = torch.optim.AdamW(
            self.model.param_groups(decay) + self.aux.param_groups(decay),
            lr=config.optim.lr,
            betas=tuple(config.optim.betas),
            eps=config.optim.eps,
        )
        if config.train.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.precision: fp16 needs a CUDA device (use bf16 on CPU).")
        self.scaler = torch.amp.GradScaler("cuda") if config.train.precision == "fp16" else None
        tokenizers = {"text": self.tokenizer} if self.tokenizer is not None else {}
        self.stream = BatchStream(config, self.train_source, tokenizers)
        # judged once 1,000 records were seen: one corrupt image in the first batch is no trend
        self.bad_records = BadRecordLog(config.data.max_bad_fraction, min_seen=1000)
        self.step = 0
        self.last_checkpoint: Path | None = None
        self._checked_gradients = False

    # ---- one step -------------------------------------------------------------------------
    def _autocast(self):
        precision = self.config.train.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _encode(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        inputs = flatten_views(batch, self.model.modalities)
        with self._autocast():  # one forward (one DDP forward) for every text of the batch
            normalize = getattr(self.objective, "normalize", True)  # margin_mse: raw dot products
            # loss.token_weight: the towers' tokens too, from the same forward
            tokens = {"tokens": True} if getattr(self.objective, "uses_tokens", False) else {}
            return self.parallel_model(inputs, normalize=normalize, aliases=text_aliases(inputs), **tokens)

    def _batch(self) -> tuple[dict[str, Any], list[int]]:
        """The next usable batch on the device, and every rank's rows of the global batch.

        Bad records are logged and checked against the global counts; every rank learns every
        rank's rows and bad records in one handshake, so all of them skip a batch, or stop on an
        error, together."""
        while True:
            batch, error = None, None
            try:
                batch = self.stream.next()
            except ContrastkitError as err:
                error = err
            size = 0 if batch is None else int(batch["index"].numel())
            bad = [] if batch is None else batch["bad"]
            counts = agree_on_step("training data", (size, len(bad)), error)
            seen = sum(rows + n_bad for rows, n_bad in counts)
            self.bad_records.add(bad, seen, elsewhere=sum(n_bad for _, n_bad in counts) - len(bad))
            self.bad_records.check()
            sizes = [rows for rows, _ in counts]
            if min(sizes) >= 1 and sum(sizes) >= 2:
                keep = (
                    *self.model.modalities,
                    "label",
                    "index",
                    SECOND_CAPTION,
                    *AUGMENTED_VIEWS,
                    *retrieval_keys(self.config),
                )
                inputs = {k: v for k, v in batch.items() if k in keep}
                return to_device(inputs, self.device), sizes

    def _loss(self, embeddings: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        """The contrastive objective plus the weighted auxiliary losses."""
        loss = self.objective(embeddings, batch)
        aux = self.aux(embeddings, batch)
        return loss if aux is None else loss + aux

    def train_step(self) -> tuple[float, int]:
        """One optimiser step; returns (loss of the global batch, samples in it)."""
        config = self.config
        batch, sizes = self._batch()
        lr = learning_rate(config, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        micro = config.train.micro_batch_size
        # decided on the largest slice, so every rank takes the same path (DDP's collectives match)
        if micro is not None and micro < max(sizes):
            loss = gradcache_step(
                self.parallel_model,
                {k: v for k, v in batch.items() if k != "label"},
                lambda reps: self._loss(reps, batch),
                micro,
                encode=self._encode,
                scaler=self.scaler,
            )
        else:
            loss = self._loss(self._encode(batch), batch)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if not self._checked_gradients:  # once per process: DDP needs every parameter used
            check_every_parameter_learns(self.model)
            self._checked_gradients = True
        average_loss_gradients(self.model, self.aux.parameters())
        value = all_reduce_mean(float(loss.detach()))
        self.aux_values = {name: all_reduce_mean(v) for name, v in self.aux.last.items()}
        if not math.isfinite(value):
            self._fail_non_finite(value)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if config.optim.grad_clip is not None:
            trained = [*self.model.parameters(), *self.aux.parameters()]
            torch.nn.utils.clip_grad_norm_(trained, config.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        return value, sum(sizes)

    def _fail_non_finite(self, value: float) -> None:
        where = (
            f"the last good checkpoint is {self.last_checkpoint}; resume from it with --resume and a lower "
            f"optim.lr (or a stronger optim.grad_clip)"
            if self.last_checkpoint is not None
            else "no checkpoint was written yet; lower optim.lr or check the data"
        )
        raise TrainingError(
            f"step {self.step + 1}: the loss is {value}; training stopped before the weights were "
            f"updated. {where}."
        )

    # ---- bookkeeping -----------------------------------------------------------------------
    def _save(self) -> None:
        """A checkpoint (written by rank 0) with every rank's generator states and data position."""
        rank_states = rank_rng_tensors()
        positions = gather_objects(self.stream.position())  # equal, unless each rank streams its shards
        self._on_main(
            f"writing checkpoint {self.step}", lambda: self._write_checkpoint(rank_states, positions)
        )
        self.last_checkpoint = checkpoint_dir(self.run_dir, self.step)

    def _write_checkpoint(
        self, rank_states: dict[str, torch.Tensor], positions: list[dict[str, int]]
    ) -> None:
        state = {
            "config": self.config.to_dict(),
            "data_position": positions[0],
            "data_positions": positions,
            "bad_records": {"bad": self.bad_records.bad, "seen": self.bad_records.seen},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "aux_losses": self.aux.names,
            "contrastkit_version": _version(),
        }
        tokenizer_file = self.run_dir / TOKENIZER_FILE
        files = {TOKENIZER_FILE: tokenizer_file.read_bytes()} if tokenizer_file.is_file() else None
        save_checkpoint(
            self.run_dir,
            self.step,
            self.model,
            self.optimizer,
            state,
            keep=self.config.train.keep_checkpoints,
            files=files,
            tensors={**rank_states, **self.aux.state_tensors(), **defense_state_tensors(self.objective)},
        )

    def _resume(self) -> None:
        if self.is_main:
            remove_incomplete(self.run_dir)  # a writer killed mid-save (never under a final name)
        checkpoint = load_checkpoint(self.run_dir)
        state = checkpoint["state"]
        self.aux.check_names(state.get("aux_losses", []), checkpoint["path"])
        restore(checkpoint, self.model, self.optimizer)
        self.aux.load_state_tensors(checkpoint["tensors"], checkpoint["path"])
        restore_rank_rng(checkpoint["rng"], self.config.seed, int(state["step"]))
        check_resumable(checkpoint, self.config)
        restore_defense_state(self.objective, checkpoint["tensors"], checkpoint["path"])
        self.step = int(state["step"])
        self.stream.seek(self._own_position(state))
        self.bad_records.bad, self.bad_records.seen = (
            state["bad_records"]["bad"],
            state["bad_records"]["seen"],
        )
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.last_checkpoint = checkpoint["path"]
        if self.step >= self.config.train.steps and not self.restarted:
            raise TrainingError(
                f"--resume: the checkpoint {checkpoint['path']} is already at step {self.step} of "
                f"train.steps={self.config.train.steps}; raise train.steps to train further."
            )

    def _own_position(self, state: dict[str, Any]) -> dict[str, int]:
        """This rank's data position in a checkpoint. Ranks that stream their own shards each
        have one, so such a run resumes only on as many processes as wrote it."""
        positions = state.get("data_positions", [state["data_position"]])
        if self.stream.sampler is None and len(positions) != self.world:
            raise TrainingError(
                f"--resume: the checkpoint was written by {len(positions)} process(es), each streaming "
                f"its own shards; resume it with {len(positions)} (not {self.world}), or the data would "
                f"repeat and skip records."
            )
        return positions[self.rank] if self.stream.sampler is None else positions[0]

    # ---- the run ---------------------------------------------------------------------------
    def fit(self) -> None:
        """Train to ``train.steps``, logging and checkpointing (every rank; rank 0 writes)."""
        config = self.config
        if self.resume:
            self._resume()
        self._on_main("opening the run's log", self._open_outputs)
        progress = Progress(config.train.steps, self.step, config.train.progress and self.is_main)
        start = window_start = time.perf_counter()
        window_samples = 0
        try:
            while self.step < config.train.steps:
                loss, size = self.train_step()
                window_samples += size
                progress.update(1)
                last = self.step == config.train.steps
                if self.step % config.train.log_every == 0 or last:
                    now = time.perf_counter()
                    row = self._log_row(loss, window_samples / max(now - window_start, 1e-9), now - start)
                    self._on_main(
                        "writing log.csv",
                        lambda row=row: self.run_log.write(row, self.step, progress),
                    )
                    window_start, window_samples = now, 0
                if self.step % config.train.checkpoint_every == 0 or last:
                    self._save()
        finally:
            progress.close()
            self.run_log.close()
        self.train_seconds = time.perf_counter() - start
        self.bad_records.examples = gather_bad_record_examples(
            self.bad_records.examples, self.bad_records.keep
        )

    def _on_main(self, what: str, action: Callable[[], Any]) -> Any:
        """``action()`` on rank 0 only (writing files); if it fails there, every rank stops with
        its message instead of waiting for rank 0 in the next collective."""
        result, error = None, None
        if self.is_main:
            try:
                result = action()
            except (ContrastkitError, OSError) as err:
                error = err
        agree_on_step(what, (), error)
        return result

    def _open_outputs(self) -> None:
        """config.yaml, the log (kept up to the resumed step) and TensorBoard; rank 0."""
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        self.run_log.open(keep_until=self.step if self.resume else None)

    def _log_row(self, loss: float, samples_per_s: float, elapsed: float) -> dict[str, Any]:
        """One ``log.csv`` row; scale and bias stay empty when the loss does not use them."""
        bias = self.model.bias()
        return {
            "step": self.step,
            "epoch": self.stream.epoch,
            "loss": f"{loss:.6f}",
            "scale": f"{self.model.logit_scale.value:.4f}" if self.logs_scale else "",
            "bias": "" if bias is None else f"{float(bias.detach()):.4f}",
            "lr": f"{self.optimizer.param_groups[0]['lr']:.6g}",
            "samples_per_s": f"{samples_per_s:.1f}",
            "elapsed_s": f"{elapsed:.2f}",
            **{f"aux_{name}": f"{v:.6f}" for name, v in getattr(self, "aux_values", {}).items()},
        }

    def evaluate(self) -> dict[str, float]:
        """Final metrics on ``data.eval`` (and the report artifacts)."""
        config, source = self.config, self.eval_source
        metrics: dict[str, float] = {
            "train/steps": self.step,
            "train/seconds": round(getattr(self, "train_seconds", 0.0), 2),
        }
        if source is None:
            return metrics
        embed = Embedder(self.model, self.tokenizer, config.data.image_size, config.eval.batch_size)
        modalities = self.model.modalities
        if set(modalities) == {"image", "text"}:
            found, artifacts = evaluate_paired(
                embed, source, config.eval.templates, config.data.eval_max_records
            )
            metrics.update(found)
            write_artifacts(self.run_dir, source, artifacts, config.data.image_size, config.eval.examples)
        elif modalities == ("image",) and source.labels() is not None:
            train_source = self.train_source
            if not isinstance(train_source, Source):  # streamed shards: the probe reads them whole
                train_source = build_source(config.data.train, "train")
            if train_source.labels() is not None:
                metrics.update(
                    evaluate_probe(
                        embed, train_source, source, config.eval.knn_k, config.data.eval_max_records
                    )
                )
        return metrics

    def run(self) -> dict[str, float]:
        """fit, then ``conclude``; returns the metrics (under torchrun: {} on ranks > 0)."""
        self.fit()
        return self.conclude() if self.is_main else {}

    def conclude(self) -> dict[str, float]:
        """Evaluate and write metrics.json, data_issues.txt and report.html (rank 0, no
        collectives: under torchrun the others may have left the process group)."""
        metrics = self.evaluate()
        write_json_atomic(self.run_dir / "metrics.json", metrics)
        if self.bad_records.bad:
            (self.run_dir / "data_issues.txt").write_text(self.bad_records.summary() + "\n")
        from contrastkit.report import write_report

        write_report(self.run_dir)
        return metrics


def _version() -> str:
    from contrastkit import __version__

    return __version__


def train(
    config: Config,
    run_dir: str | Path,
    resume: bool = False,
    aux_losses: Mapping[str, tuple[float, AuxLoss]] | None = None,
) -> dict[str, float]:
    """Train, evaluate and report one run (the ``contrastkit train`` command)."""
    return Trainer(config, run_dir, resume, aux_losses).run()

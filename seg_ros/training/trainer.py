"""The trainer behind ``seg-train``: stages of epochs over ``seg_ros.models`` networks.

One process on a CPU or a GPU, or several under ``torchrun`` (DistributedDataParallel, one GPU per
process, SyncBatchNorm; gloo on CPUs). Only rank 0 writes. Every epoch ends with an atomic
``last.pt`` holding the full resume state (network, optimiser, schedule, gradient scaler, stage,
epoch, step, every process' random generators), and the best validation mIoU so far is kept
as ``best.pt``; both are ordinary ``seg_ros.checkpoint`` files, the ones the node loads.

Exact resume: the data order of an epoch is a function of (seed, epoch) (``DistributedSampler``,
also with one process), worker processes are seeded from a loader generator seeded from (seed,
rank, epoch), and the global generators the main process draws augmentation, dropout and mixup
from are saved and restored. With ``train.deterministic`` on a CPU, a run killed at any point
and resumed ends with the same weights as one never interrupted.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from seg_ros.checkpoint import IMAGENET_MEAN, IMAGENET_STD, Checkpoint, load_checkpoint, save_checkpoint
from seg_ros.data import DatasetError, EvalTransform, TrainTransform, mixup_batch
from seg_ros.labels import IGNORE_INDEX, LabelSet
from seg_ros.models import build_model, count_parameters
from seg_ros.reporting import clock_duration
from seg_ros.training.config import RecipeError, Stage, dump_recipe, resolve_stages
from seg_ros.training.evaluate import autocast_context, evaluate, summarize
from seg_ros.training.feeding import (
    LazyClassFrequencies,
    SplitCache,
    StageRun,
    check_datasets,
    describe_feeding,
    open_dataset,
    remaining_steps,
    resize_target,
    resolve_num_workers,
    train_loader,
)
from seg_ros.training.finetune import InitError, load_initial_weights
from seg_ros.training.losses import build_criterion
from seg_ros.training.processes import (
    configure_determinism,
    derived_seed,
    rng_state,
    set_rng_state,
    start_processes,
)
from seg_ros.training.runlog import RunLog, changed_keys, plot_run, provenance, remaining_seconds
from seg_ros.training.schedules import build_optimizer, build_scheduler
from seg_ros.training.speed import StepChoice, StepSettings, choose_step_settings, compile_pays

__all__ = ['BEST', 'LAST', 'Trainer', 'TrainingError']

log = logging.getLogger(__name__)

LAST, BEST, RECIPE = 'last.pt', 'best.pt', 'recipe.yaml'


class TrainingError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


# -- the trainer --------------------------------------------------------------------------------------


class Trainer:
    """Runs a recipe (see ``seg_ros.training.config``) from the start or from ``last.pt``.

    >>> from seg_ros.training.config import load_recipe
    >>> Trainer(load_recipe('enet_camvid', ['data.root=/data/camvid'])).fit()
    """

    def __init__(self, recipe: dict[str, Any], *, resume: bool | str | os.PathLike = False) -> None:
        self.recipe = recipe
        self.stages = resolve_stages(recipe)
        self.train_cfg = recipe['train']
        self.eval_cfg = recipe['eval']
        self.output = Path(recipe['output']['dir'])
        self.procs = start_processes(self.train_cfg['device'])
        self.device = self.procs.device
        self.resume_path = self._resume_path(resume)
        configure_determinism(self.train_cfg['deterministic'])
        seed = self.train_cfg['seed']
        random.seed(seed + self.procs.rank)
        np.random.seed(seed + self.procs.rank)
        torch.manual_seed(seed + self.procs.rank)

        self.labels = self._check_data()
        model_cfg = recipe['model']
        self.net = build_model(model_cfg['name'], self.labels.num_classes, **model_cfg['options'])
        self.input_size = self._input_size()
        self.best_miou: float | None = None
        self.global_step = 0
        self.position = (0, 0)  # (stage index, epochs done in it)
        self.last_report: dict[str, Any] | None = None
        self._resume_training_state: dict[str, Any] | None = None
        self._saved_rng: list[dict[str, Any]] | None = None
        self._prepared: dict[int, StageRun] = {}
        self._splits = SplitCache()
        self._provenance = provenance()
        if self.resume_path is not None:
            self._load_resume_state()
        elif model_cfg['init'] is not None:
            try:
                load_initial_weights(self.net, Path(model_cfg['init']), model_cfg, self.labels)
            except InitError as exc:
                raise TrainingError(str(exc)) from None
        self.step_choice = self._choose_step_settings()
        timings = ', '.join(f'{name} {seconds:.3f} s' for name, seconds in self.step_choice.timings.items())
        log.info('training step: %s (%s%s)', self.step_choice.settings, self.step_choice.reason,
                 f'; seconds per step: {timings}' if timings else '')
        self.compile, compile_reason = self._decide_compile()
        log.info('torch.compile: %s (%s)', 'on' if self.compile else 'off', compile_reason)
        self.precision = self.step_choice.settings.precision
        self.memory_format = (torch.channels_last if self.step_choice.settings.channels_last
                              else torch.contiguous_format)
        self.net.to(self.device, memory_format=self.memory_format)
        if self.procs.distributed and self.device.type == 'cuda':
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        self.log: RunLog | None = None

    # -- set-up ---------------------------------------------------------------------------------------

    def _resume_path(self, resume: bool | str | os.PathLike) -> Path | None:
        last = self.output / LAST
        if resume is False:
            if last.exists():
                raise TrainingError(f'{self.output} already holds a run ({LAST}); pass --resume to continue '
                                    'it, or choose another output.dir')
            return None
        if resume is True:
            if not last.exists():
                log.info('--resume: no %s in %s yet, starting from the beginning', LAST, self.output)
                return None
            return last
        path = Path(resume)
        if not path.is_file():
            raise TrainingError(f'--resume {path}: no such checkpoint')
        return path

    def _check_data(self) -> LabelSet:
        """Open every dataset, check that their classes agree and, before any training, read every file."""
        try:
            labels, problems = check_datasets(self.stages, read_files=self.procs.is_main)
        except DatasetError as exc:
            raise TrainingError(str(exc)) from None
        if problems:
            shown = '\n  '.join(problems[:50])
            more = f'\n  ... and {len(problems) - 50} more' if len(problems) > 50 else ''
            raise TrainingError(f'{len(problems)} problem(s) in the data, nothing was trained:\n  '
                                f'{shown}{more}')
        self._barrier()
        return labels

    def _choose_step_settings(self) -> StepChoice:
        """``train.precision`` / ``train.channels_last``, with ``auto`` resolved by timing a few steps.

        A resumed run keeps what its first start chose, so that its numbers do not change mid-run.
        """
        precision, channels_last = self.train_cfg['precision'], self.train_cfg['channels_last']
        saved = (self._resume_training_state or {}).get('step_settings')
        if saved is not None and 'auto' in (precision, channels_last):
            return StepChoice(StepSettings(**saved), reason=f'chosen when the run started ({self.resume_path})')
        if self.train_cfg['deterministic']:  # a timing-based choice would differ from run to run
            return StepChoice(StepSettings('fp32' if precision == 'auto' else precision,
                                           False if channels_last == 'auto' else channels_last),
                              reason='deterministic run: auto is fp32, NCHW')
        stage = self.stages[min(self.position[0], len(self.stages) - 1)]
        return self._agreed(lambda: choose_step_settings(
            self.net, self.device, batch=stage.batch_size, crop=stage.augment['crop_size'],
            num_classes=self.labels.num_classes, precision=precision, channels_last=channels_last))

    def _decide_compile(self) -> tuple[bool, str]:
        """``train.compile``, with ``auto`` decided by ``compile_pays`` (a resumed run keeps its decision)."""
        requested = self.train_cfg['compile']
        saved = (self._resume_training_state or {}).get('compile')
        if requested != 'auto':
            return requested, 'train.compile'
        if saved is not None:
            return saved, f'decided when the run started ({self.resume_path})'
        if self.train_cfg['deterministic']:
            return False, 'deterministic run'
        stage, settings = self.stages[self.position[0]], self.step_choice.settings
        return self._agreed(lambda: compile_pays(
            self.net, settings, self.device, batch=stage.batch_size, crop=stage.augment['crop_size'],
            num_classes=self.labels.num_classes, run_steps=remaining_steps(self.stages, self.position),
            eager_step_s=self.step_choice.timings.get(str(settings))))

    def _agreed(self, decide: Callable[[], Any]) -> Any:
        """``decide()`` on the main process, shared with the others: every process must train alike."""
        shared = [decide() if self.procs.is_main else None]
        if self.procs.distributed:
            dist.broadcast_object_list(shared, src=0)
        return shared[0]

    def _input_size(self) -> tuple[int, int]:
        """The resolution the checkpoint declares: what validation feeds the network."""
        if self.eval_cfg['input_size'] is not None:
            return tuple(self.eval_cfg['input_size'])
        data = self.stages[-1].data
        if data['val_split'] is None:
            return tuple(self.stages[-1].augment['crop_size'])
        dataset = open_dataset(data, data['val_split'])
        return tuple(dataset.read_image(dataset.files[0][0]).shape[:2])

    def _build_stage(self, stage: Stage) -> StageRun:
        data, augment = stage.data, stage.augment
        world, rank = self.procs.world_size, self.procs.rank
        transform = TrainTransform(crop_size=tuple(augment['crop_size']),
                                   scale_range=tuple(augment['scale_range']), hflip=augment['hflip'],
                                   mean=IMAGENET_MEAN, std=IMAGENET_STD)
        train_set = open_dataset(data, data['train_split'], transform)
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                     seed=self.train_cfg['seed'], drop_last=True)
        if len(sampler) < stage.batch_size:
            raise TrainingError(f'stage {stage.name!r}: {len(train_set)} training images ({len(sampler)} per '
                                f'process) are fewer than one batch of {stage.batch_size}')
        on_device = data['batch_augment'] is True or (data['batch_augment'] == 'auto' and self.device.type == 'cuda')
        try:
            frames = self._splits.frames(data, data['train_split'], self.device if on_device else torch.device('cpu'))
        except DatasetError as exc:
            raise TrainingError(f'data.cache=true: {exc}') from None
        workers = resolve_num_workers(data['num_workers'], cached=frames is not None)
        loader = train_loader(train_set, sampler, stage.batch_size, frames, on_device=on_device, workers=workers,
                              pin_memory=self.device.type == 'cuda')
        val_loader = None
        if data['val_split'] is not None:
            val_set = open_dataset(data, data['val_split'], EvalTransform(IMAGENET_MEAN, IMAGENET_STD))
            shard = Subset(val_set, range(rank, len(val_set), world))
            val_loader = DataLoader(shard, batch_size=self.eval_cfg['batch_size'], shuffle=False,
                                    num_workers=workers, pin_memory=self.device.type == 'cuda')
        frequencies = LazyClassFrequencies(open_dataset(data, data['train_split']),
                                           self.output / f'class_frequencies_{data["dataset"]}_'
                                                         f'{data["train_split"]}.json',
                                           announce=self.procs.is_main)
        try:
            criterion = build_criterion(stage.loss, num_classes=self.labels.num_classes,
                                        class_frequencies=frequencies, ignore_index=IGNORE_INDEX)
        except (ValueError, TypeError) as exc:
            raise RecipeError(f'stage {stage.name!r} loss: {exc}') from None
        forward_options = {}
        if stage.encoder_only:
            forward_options['encoder_only'] = True
        if criterion.needs_context:
            forward_options['with_context'] = True
        return StageRun(stage, loader, sampler, val_loader, criterion.to(self.device), forward_options)

    def _unused_parameters(self, run: StageRun) -> list[str]:
        """Parameters the stage's forward pass leaves without a gradient (checked on a small input).

        Also the first place a recipe asking the network for a path it lacks (``encoder_only``,
        ``with_context``) fails, before any data is loaded.
        """
        side = max(64, 2 * getattr(self.net, 'size_divisor', 32))
        probe = torch.zeros(1, 3, side, side, device=self.device).contiguous(memory_format=self.memory_format)
        self.net.eval()
        try:
            output = self.net(probe, **run.forward_options)
        except (TypeError, ValueError) as exc:
            raise RecipeError(f'stage {run.stage.name!r}: network {self.recipe["model"]["name"]!r} cannot '
                              f'run with {run.forward_options} ({exc}); encoder_only needs a network with an '
                              'encoder-only path (erfnet), a semantic encoding loss (sel) a network with a '
                              'context head (dsnet with model.options={context_head: true})') from None
        outputs = output if isinstance(output, tuple) else (output,)
        sum(o.float().sum() for o in outputs).backward()
        unused = [name for name, p in self.net.named_parameters() if p.requires_grad and p.grad is None]
        self.net.zero_grad(set_to_none=True)
        self.net.train()
        return unused

    # -- fine-tuning and resume ------------------------------------------------------------------------

    def _load_resume_state(self) -> None:
        try:
            checkpoint = load_checkpoint(self.resume_path)
        except Exception as exc:  # CheckpointError and whatever a half-written disk gives
            raise TrainingError(f'cannot resume: {exc}') from None
        state = checkpoint.training
        if state is None:
            raise TrainingError(f'cannot resume from {self.resume_path}: it holds no training state '
                                f'(a {BEST} or exported file); resume from {LAST}')
        name = self.recipe['model']['name']
        if checkpoint.model_name != name or checkpoint.num_classes != self.labels.num_classes:
            raise TrainingError(f'cannot resume from {self.resume_path}: it is a {checkpoint.model_name} '
                                f'with {checkpoint.num_classes} classes, the recipe trains a {name} with '
                                f'{self.labels.num_classes}')
        changed = changed_keys(checkpoint.meta.get('recipe', {}), self.recipe)
        if changed:
            log.warning('resuming with recipe keys changed since the checkpoint: %s', ', '.join(changed))
        self.net.load_state_dict(checkpoint.state_dict)
        self.position = (int(state['stage']), int(state['epoch']))
        self.global_step = int(state['global_step'])
        self.best_miou = state['best_miou']
        self._resume_training_state = state
        if state['world_size'] == self.procs.world_size:
            self._saved_rng = state['rng']
        else:
            log.warning('resuming with %d processes instead of %d: random streams are reseeded',
                        self.procs.world_size, state['world_size'])
        log.info('resuming from %s: stage %d, %d epoch(s) done, step %d', self.resume_path, *self.position,
                 self.global_step)

    def _training_state(self, optimizer, scheduler, scaler) -> dict[str, Any]:
        rng = [rng_state()]
        if self.procs.distributed:
            rng = [None] * self.procs.world_size
            dist.all_gather_object(rng, rng_state())
        return {
            'stage': self.position[0],
            'epoch': self.position[1],
            'global_step': self.global_step,
            'optimizer': optimizer.state_dict(),
            'scheduler': scheduler.state_dict(),
            'scaler': scaler.state_dict(),
            'rng': rng,
            'best_miou': self.best_miou,
            'world_size': self.procs.world_size,
            'step_settings': {'precision': self.precision,
                              'channels_last': self.memory_format == torch.channels_last},
            'compile': self.compile,
        }

    # -- checkpoints -----------------------------------------------------------------------------------

    def _checkpoint(self, training: dict[str, Any] | None) -> Checkpoint:
        stage = self.stages[min(self.position[0], len(self.stages) - 1)]
        meta = {
            'recipe': self.recipe,
            'metrics': self.last_report and {k: v for k, v in self.last_report.items()
                                             if k != 'confusion_matrix'},
            'provenance': self._provenance,
            'saved': datetime.now(timezone.utc).isoformat(timespec='seconds'),
            'training_resolution': list(stage.augment['crop_size']),
            'stage': stage.name,
            'epochs': [self.position[0], self.position[1]],
            'parameters': count_parameters(self.net),
        }
        return Checkpoint.from_model(self.net, self.recipe['model']['name'], self.labels,
                                     model_options=dict(self.recipe['model']['options']),
                                     input_size=self.input_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                     meta=meta, training=training)

    # -- the loop --------------------------------------------------------------------------------------

    def fit(self) -> Path:
        """Train every remaining stage; returns the path of ``last.pt``."""
        for line in self.check():
            log.info('%s', line)
        if self.procs.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / RECIPE).write_text(dump_recipe(self.recipe))
            self.log = RunLog(self.output)
            self.log.write({'event': 'start', 'resume': str(self.resume_path) if self.resume_path else None,
                            'processes': self.procs.world_size, 'device': str(self.device),
                            'parameters': count_parameters(self.net),
                            'step_settings': {'precision': self.precision,
                                              'channels_last': self.memory_format == torch.channels_last,
                                              'compile': self.compile,
                                              'reason': self.step_choice.reason,
                                              'seconds_per_step': self.step_choice.timings}})
            log.info('%s: %d parameters, %d process(es) on %s, output %s', self.recipe['model']['name'],
                     count_parameters(self.net), self.procs.world_size, self.device, self.output)
        try:
            for index in range(self.position[0], len(self.stages)):
                self._fit_stage(index)
            if self.procs.is_main:
                plot_run(self.output, self.labels)
                self.log.write({'event': 'end', 'best_miou': self.best_miou})
        finally:
            if self.log is not None:
                self.log.close()
        self._barrier()
        return self.output / LAST

    def _prepare_stage(self, index: int) -> StageRun:
        """The stage's data, criterion, optimiser and schedule, and the parameters it leaves unused."""
        stage = self.stages[index]
        run = self._build_stage(stage)
        run.unused = self._unused_parameters(run)
        try:
            params = [p for p in self.net.parameters() if p.requires_grad]
            run.optimizer = build_optimizer(params, stage.optimizer)
            run.scheduler = build_scheduler(run.optimizer, stage.scheduler, steps_per_epoch=len(run.loader),
                                            epochs=stage.epochs)
        except (ValueError, TypeError) as exc:
            raise RecipeError(f'stage {stage.name!r}: {exc}') from None
        return run

    def check(self) -> list[str]:
        """Build every remaining stage (data, loss, optimiser, schedule, a forward pass) without training.

        Returns one summary line per stage. ``fit`` does this first, so that a mistake in the
        last stage of a recipe shows before the first one trains, and trains with what it built.
        """
        lines = []
        for index in range(self.position[0], len(self.stages)):
            stage = self.stages[index]
            run = self._prepared[index] = self._prepare_stage(index)
            unused = run.unused
            lines.append(f'stage {index + 1} {stage.name!r}: {stage.epochs} epochs x {len(run.loader)} '
                         f'batches of {stage.batch_size} ({len(run.sampler.dataset)} images), '
                         f'{describe_feeding(run.loader)}, crop '
                         f'{stage.augment["crop_size"]}, loss {stage.loss}, {stage.optimizer}, '
                         f'{stage.scheduler}' + (', encoder only' if stage.encoder_only else '')
                         + (f', {len(unused)} parameter tensor(s) unused' if unused else ''))
        return lines

    def _fit_stage(self, index: int) -> None:
        stage = self.stages[index]
        done = self.position[1] if self.position[0] == index else 0
        if done >= stage.epochs:
            self.position = (index + 1, 0)
            return
        run = self._prepared.pop(index, None) or self._prepare_stage(index)
        optimizer, scheduler = run.optimizer, run.scheduler
        model: nn.Module = self.net
        if self.procs.distributed:
            device_ids = [self.device.index] if self.device.type == 'cuda' else None
            model = DistributedDataParallel(self.net, device_ids=device_ids,
                                            find_unused_parameters=bool(run.unused))
        if self.compile:
            # Static shapes: a stage's crop is fixed, and the dynamic graph dynamo would otherwise
            # build when a later stage changes the crop fails in inductor for DSNet's unpooling.
            model = torch.compile(model, dynamic=False)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == 'fp16')
        if done:
            state = self._resume_training_state
            try:
                optimizer.load_state_dict(state['optimizer'])
                scheduler.load_state_dict(state['scheduler'])
            except ValueError as exc:  # the recipe's stage changed (epochs, optimiser) since the checkpoint
                raise TrainingError(f'cannot resume stage {stage.name!r} from {self.resume_path}: {exc}; to go on '
                                    f'with other settings, start a new run from its weights: '
                                    f'model.init={self.resume_path}') from None
            scaler.load_state_dict(state['scaler'])
        if self._saved_rng is not None:
            set_rng_state(self._saved_rng[self.procs.rank])
            self._saved_rng = None
        self.position = (index, done)
        log.info('stage %d/%d %r: epochs %d-%d, batch %d x %d process(es), crop %s, %s%s', index + 1,
                 len(self.stages), stage.name, done + 1, stage.epochs, stage.batch_size,
                 self.procs.world_size, stage.augment['crop_size'], stage.optimizer['name'],
                 ', encoder only' if stage.encoder_only else '')
        for epoch in range(done, stage.epochs):
            started = time.perf_counter()
            train_stats = self._train_epoch(model, run, optimizer, scheduler, scaler, index, epoch)
            report = None
            last_epoch = epoch + 1 == stage.epochs
            if run.val_loader is not None and ((epoch + 1) % self.train_cfg['val_every'] == 0 or last_epoch):
                report = self._validate(run)
            train_stats['wall_time'] = time.perf_counter() - started
            train_stats['remaining_s'] = remaining_seconds(self.stages, index, epoch, train_stats['wall_time'])
            scheduler.step_epoch(self._schedule_metric(train_stats, report))
            self.position = (index, epoch + 1)
            self._end_epoch(index, epoch, train_stats, report, optimizer, scheduler, scaler)
        self._barrier()

    def _schedule_metric(self, train_stats: dict[str, float], report: dict[str, Any] | None) -> float | None:
        """What a metric-driven schedule (plateau_halving) watches: val mIoU (fraction) or train loss."""
        if self.train_cfg['schedule_metric'] == 'train_loss':
            return train_stats['train_loss']
        return None if report is None or report['miou'] is None else report['miou'] / 100.0

    def _train_epoch(self, model, run: StageRun, optimizer, scheduler, scaler, stage_index: int,
                     epoch: int) -> dict[str, float]:
        stage = run.stage
        global_epoch = sum(s.epochs for s in self.stages[:stage_index]) + epoch
        run.sampler.set_epoch(global_epoch)
        if isinstance(run.loader, DataLoader):  # its workers' seeds; in memory, the process' generator draws
            run.loader.generator.manual_seed(derived_seed(self.train_cfg['seed'], self.procs.rank, global_epoch))
        mixup_alpha = stage.augment['mixup_alpha']
        log_every = self.train_cfg['log_every']
        if log_every == 'auto':
            log_every = max(1, len(run.loader) // 10)
        model.train()
        total_loss = torch.zeros((), device=self.device)
        images_seen, started = 0, time.perf_counter()
        bar = tqdm(run.loader, desc=f'{stage.name} {epoch + 1}/{stage.epochs}', unit='batch', leave=False,
                   dynamic_ncols=True, disable=None if self.procs.is_main else True)
        for batch, (images, labels) in enumerate(bar, 1):
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            target = labels.to(self.device, non_blocking=True)
            if mixup_alpha > 0:
                images, target = mixup_batch(images, target, num_classes=self.labels.num_classes,
                                             alpha=mixup_alpha, ignore_index=IGNORE_INDEX)
            with autocast_context(self.device, self.precision):
                output = model(images, **run.forward_options)
            logits, presence = (output if isinstance(output, tuple) else (output, None))
            if stage.encoder_only:
                target = resize_target(target, tuple(logits.shape[-2:]))
            loss = run.criterion(logits.float(), target,
                                 presence_logits=None if presence is None else presence.float())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step_batch()
            self.global_step += 1
            total_loss += loss.detach()
            images_seen += images.shape[0] * self.procs.world_size
            if batch % log_every == 0 or batch == len(run.loader):
                mean_loss = total_loss.item() / batch
                if not math.isfinite(mean_loss) and self.precision != 'fp16':
                    raise TrainingError(f'stage {stage.name!r} epoch {epoch + 1}: the loss became '
                                        f'{mean_loss} at step {self.global_step}; lower the learning rate '
                                        f'({optimizer.param_groups[0]["lr"]:.3g}) or check the data')
                speed = images_seen / (time.perf_counter() - started)
                lr = optimizer.param_groups[0]['lr']
                bar.set_postfix(loss=f'{mean_loss:.4f}', lr=f'{lr:.3g}', img_s=f'{speed:.1f}')
                if self.log is not None:
                    self.log.write({'event': 'step', 'stage': stage_index, 'epoch': epoch,
                                    'step': self.global_step, 'loss': mean_loss, 'lr': lr,
                                    'images_per_s': speed}, step=self.global_step)
        bar.close()
        elapsed = time.perf_counter() - started
        mean_loss = self._mean_over_processes(total_loss / len(run.loader))
        return {'train_loss': mean_loss, 'lr': optimizer.param_groups[0]['lr'],
                'images_per_s': images_seen / elapsed, 'epoch_time': elapsed, 'global_epoch': global_epoch,
                'steps': len(run.loader), 'end_step': self.global_step}

    def _validate(self, run: StageRun) -> dict[str, Any]:
        batches = tqdm(run.val_loader, desc='validation', unit='batch', leave=False, dynamic_ncols=True,
                       disable=None if self.procs.is_main else True)
        confusion = evaluate(self.net, batches, num_classes=self.labels.num_classes,
                             device=self.device, input_size=self.eval_cfg['input_size'],
                             flip=self.eval_cfg['flip'], scales=self.eval_cfg['scales'],
                             precision=self.precision, channels_last=self.step_choice.settings.channels_last,
                             forward_options={'encoder_only': True} if run.stage.encoder_only else None)
        self.net.train()
        return summarize(confusion, self.labels)

    def _end_epoch(self, stage_index: int, epoch: int, train_stats: dict[str, float],
                   report: dict[str, Any] | None, optimizer, scheduler, scaler) -> None:
        stage = self.stages[stage_index]
        improved = False
        if report is not None:
            self.last_report = report
            # An encoder-only network is not what plain forward() gives, so it is never the best.
            if not stage.encoder_only and report['miou'] is not None and (
                    self.best_miou is None or report['miou'] > self.best_miou):
                self.best_miou, improved = report['miou'], True
        training = self._training_state(optimizer, scheduler, scaler)
        if not self.procs.is_main:
            return
        # The epoch's record first, then best.pt, then last.pt: a run killed between them redoes the
        # epoch (whose record then counts once), and a last.pt naming a best mIoU has that best.pt.
        val = None if report is None else {k: report[k] for k in ('miou', 'pixel_accuracy',
                                                                   'mean_class_accuracy', 'per_class_iou')}
        self.log.write({'event': 'epoch', 'stage': stage_index, 'stage_name': stage.name, 'epoch': epoch,
                        **train_stats, 'val': val, 'best_miou': self.best_miou}, step=self.global_step)
        if improved:
            save_checkpoint(self._checkpoint(None), self.output / BEST)
        save_checkpoint(self._checkpoint(training), self.output / LAST)
        log.info('%s epoch %d/%d: loss %.4f, lr %.3g, %.1f img/s, %.0f s%s, run ETA %s', stage.name, epoch + 1,
                 stage.epochs, train_stats['train_loss'], train_stats['lr'], train_stats['images_per_s'],
                 train_stats['wall_time'],
                 '' if report is None else f', val mIoU {_fmt(report["miou"])} (best {_fmt(self.best_miou)})',
                 clock_duration(train_stats['remaining_s']))

    # -- helpers ---------------------------------------------------------------------------------------

    def _barrier(self) -> None:
        if self.procs.distributed:
            dist.barrier()

    def _mean_over_processes(self, value: torch.Tensor) -> float:
        if self.procs.distributed:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.procs.world_size
        return float(value)


def _fmt(value: float | None) -> str:
    return 'n/a' if value is None else f'{value:.2f}'

"""The asynchronous rollout loop: a producer keeps generation running on the sidecar while the trainer trains.

    loop = AsyncRollouts(handle, sync, settings, prompts=batch_prompts, score=score, start_batch=0, version=0)
    loop.start()
    batch = loop.take(version=step - 1)     # the next batch in order; stale samples dropped and counted
    ... train ...
    loop.push(weights, version=step)        # pause("keep") / push / resume, then one more batch may start
    loop.stop()

**Bounded staleness.** Batch k holds `prompts_per_step` prompts x `group_size` samples. At most `max_staleness + 1`
batches are in flight: a batch's slot is freed when the trainer has trained on it AND pushed the weights that step
made (`push`). So the batch a step trains on started generating at least... at most `max_staleness` pushes ago:
`max_staleness: 0` generates batch k+1 only once the weights trained on batch k are served (exact synchronous
on-policy); `1` generates the next batch while the trainer trains on this one. Every sample's version spans say which
policy versions sampled it; at `take(version)` a sample whose oldest version is below `version - max_staleness` is
dropped and counted (the slots make that rare: a guard, e.g. after a restart from older weights).

**In order.** The batches in flight share one sidecar; each draw's requests carry priority `draw + 1` (the server
schedules by priority, lowest first; other requests, such as the held-out eval's, keep 0 and go first), so the batch
the trainer needs next is not slowed by the one generating ahead of it (the first batch of a run waited twice as
long without this, at `max_staleness: 1`).

**In-flight updates.** With `inflight_updates` a push pauses the sidecar with `keep` (requests freeze where they are),
reloads the weights and resumes: a generation that was running continues on the new weights and its sample carries
two version spans. Without, the push pauses with `wait` (running generations finish on the weights they started with).

**Active sampling** (Olmo 3; DAPO's "dynamic sampling"). A group whose rewards are all equal (every sample right, or
every one wrong) gets advantage 0 everywhere: it costs a forward/backward and teaches nothing. With `active_sampling`
such groups are left out and another draw of prompts is generated, until the batch has as many groups with reward
variance as one draw has prompts (the surplus of the last draw is left out) or `max_rounds` draws were made (the batch
then has fewer groups). Batch k makes draws k R ... k R + R - 1 (R = `max_rounds`; 1 without active sampling), so the
prompts and sampling seeds of every batch are fixed by its index, and a resumed job needs only the batch cursor.

**A lost sidecar.** A draw whose generate call fails with `SidecarUnavailable` asks for a restart (`sync.restart()`:
a new server from the latest pushed weights; one restart however many batches noticed) and is generated again from
its start: a batch is delivered exactly once (no prompt lost, none duplicated). A push that finds the server gone
restarts it from the weights it was pushing. All sync operations hold one lock.

**Idle time.** `take` measures how long the trainer waited; the loop measures how long the sidecar had no unpaused
request in flight (its idle time, as the trainer sees it).

Standard library only (torch stays in the trainer). Test: `python -m pytest tests/runtime/test_rl.py -q`.
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from runtime.rollout.client import Sample, SidecarUnavailable

MAX_ATTEMPTS = 5  # generate attempts of one draw (each failed one restarts the sidecar) before giving up
ZERO_SPREAD = 1e-8  # rewards this close count as equal, here and in runtime.rl.loss.group_advantages


@dataclass(frozen=True)
class LoopSettings:
    group_size: int
    max_tokens: int
    temperature: float
    max_staleness: int
    inflight_updates: bool
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # tests: generate max_tokens whatever the model samples
    seed: int | None = None  # sampling seed (draw d prompt i: seed + 1000 d + i); None: unseeded
    active_sampling: bool = False  # leave out groups without reward variance, draw again (see the module docstring)
    max_rounds: int = 1  # active sampling: draws per batch at most

    def __post_init__(self) -> None:
        if self.group_size < 1 or self.max_tokens < 1 or self.max_staleness < 0 or self.max_rounds < 1:
            raise ValueError(f"bad rollout settings: {self}")

    @property
    def draws_per_batch(self) -> int:
        return self.max_rounds if self.active_sampling else 1


@dataclass
class Rollout:
    """One sample of one prompt, with its reward."""

    row: Mapping[str, Any]
    prompt: list[int]
    sample: Sample
    text: str
    reward: float
    rewards: dict[str, float]

    @property
    def min_version(self) -> int:
        return self.sample.min_version


@dataclass
class RolloutBatch:
    index: int
    groups: list[list[Rollout]]  # one list per prompt
    started_version: int  # the version served when its generation started
    generate_s: float
    attempts: int = 1
    rounds: int = 1  # draws of prompts this batch took (active sampling: up to max_rounds)
    prompts_drawn: int = 0
    filtered_groups: int = 0  # active sampling: groups left out for having no reward variance
    drawn_reward_sum: float = 0.0  # over every sample drawn, the left-out groups' too
    drawn_samples: int = 0
    drawn_verifier_sums: dict[str, float] = field(default_factory=dict)  # each verifier's value over those samples
    dropped: int = 0  # samples dropped as too stale at take()
    staleness: Counter[int] = field(default_factory=Counter)  # trainer version - oldest version -> samples

    @property
    def rollouts(self) -> list[Rollout]:
        return [r for g in self.groups for r in g]


PromptFn = Callable[[int], Sequence[tuple[list[int], Mapping[str, Any]]]]  # draw index -> [(tokens, row)]
ScoreFn = Callable[[int, Sequence[str], Sequence[Mapping[str, Any]]], list[tuple[float, dict[str, float]]]]  # draw
DecodeFn = Callable[[list[int]], str]


def has_reward_variance(group: Sequence[Rollout]) -> bool:
    """Whether the group's rewards differ (GRPO's advantages are all 0 otherwise: no policy gradient)."""
    return len(group) > 1 and max(r.reward for r in group) - min(r.reward for r in group) > ZERO_SPREAD


class LoopFailed(RuntimeError):
    """The rollout loop cannot go on (the sidecar cannot be brought back); the message says why."""


class AsyncRollouts:
    """See the module docstring. `handle`: a SidecarHandle; `sync`: its WeightSync (push/restart)."""

    def __init__(self, handle: Any, sync: Any, settings: LoopSettings, *, prompts: PromptFn, score: ScoreFn,
                 decode: DecodeFn, start_batch: int = 0, version: int = 0, log: Callable[[str], None] = print):
        self.handle, self.sync, self.settings = handle, sync, settings
        self.prompts, self.score, self.decode, self.log = prompts, score, decode, log
        self.version = version  # the version the sidecar serves (last push)
        self.next_submit = self.next_take = start_batch
        self.slots = threading.Semaphore(settings.max_staleness + 1)
        self.lock = threading.RLock()  # every sync operation (push, restart) and pause/resume
        self.cond = threading.Condition()
        self.ready: dict[int, RolloutBatch] = {}
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(max_workers=settings.max_staleness + 1, thread_name_prefix="rollout")
        self.thread = threading.Thread(target=self._produce, name="rollout-producer", daemon=True)
        self.restarts = 0
        self.pushes: list[dict[str, Any]] = []
        # sidecar busy accounting: time with at least one request in flight and not paused
        self._active = 0
        self._paused = False
        self._busy_since: float | None = None
        self.busy_s = 0.0
        self.started_at = time.perf_counter()
        self.wait_s = 0.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> AsyncRollouts:
        self.started_at = time.perf_counter()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for _ in range(self.settings.max_staleness + 1):
            self.slots.release()  # wake the producer
        with self.cond:
            self.cond.notify_all()
        self.thread.join(timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ busy accounting

    def _busy_update(self, active: int | None = None, paused: bool | None = None) -> None:
        with self.cond:
            now = time.perf_counter()
            if self._busy_since is not None:
                self.busy_s += now - self._busy_since
                self._busy_since = None
            if active is not None:
                self._active += active
            if paused is not None:
                self._paused = paused
            if self._active > 0 and not self._paused:
                self._busy_since = now

    def sidecar_busy_s(self) -> float:
        with self.cond:
            extra = time.perf_counter() - self._busy_since if self._busy_since is not None else 0.0
            return self.busy_s + extra

    # ------------------------------------------------------------------ the producer

    def _produce(self) -> None:
        while not self.stopping.is_set():
            self.slots.acquire()
            if self.stopping.is_set():
                return
            index = self.next_submit
            self.next_submit += 1
            self.pool.submit(self._generate_batch, index)

    def _generate_batch(self, index: int) -> None:
        try:
            batch = self._generate(index)
        except BaseException as exc:  # noqa: BLE001 - handed to the trainer's take()
            with self.cond:
                self.error = exc
                self.cond.notify_all()
            return
        with self.cond:
            self.ready[index] = batch
            self.cond.notify_all()

    def _generate(self, index: int) -> RolloutBatch:
        """Batch `index`: draw `index * draws_per_batch` (and, with active sampling, the following draws until
        there are as many groups with reward variance as one draw has prompts)."""
        s = self.settings
        start, version = time.perf_counter(), self.version
        groups: list[list[Rollout]] = []
        attempts = drawn = filtered = rounds = samples = 0
        target, reward_sum = 0, 0.0
        verifier_sums: Counter[str] = Counter()
        for rounds in range(1, s.draws_per_batch + 1):
            draw = index * s.draws_per_batch + rounds - 1
            drawn_groups, tries = self._generate_draw(draw)
            attempts += tries
            drawn += len(drawn_groups)
            drawn_rollouts = [r for g in drawn_groups for r in g]
            samples += len(drawn_rollouts)
            reward_sum += sum(r.reward for r in drawn_rollouts)
            for r in drawn_rollouts:
                verifier_sums.update(r.rewards)
            target = target or len(drawn_groups)
            if not s.active_sampling:
                groups = drawn_groups
                break
            informative = [g for g in drawn_groups if has_reward_variance(g)]
            filtered += len(drawn_groups) - len(informative)
            groups.extend(informative[:target - len(groups)])
            if len(groups) >= target:
                break
        return RolloutBatch(index, groups, version, time.perf_counter() - start, attempts=attempts, rounds=rounds,
                            prompts_drawn=drawn, filtered_groups=filtered, drawn_reward_sum=reward_sum,
                            drawn_samples=samples, drawn_verifier_sums=dict(verifier_sums))

    def _generate_draw(self, draw: int) -> tuple[list[list[Rollout]], int]:
        """One draw of prompts, `group_size` samples each, scored: (one group per prompt, generate attempts)."""
        s = self.settings
        items = list(self.prompts(draw))
        prompts = [tokens for tokens, _ in items]
        seed = None if s.seed is None else s.seed + 1000 * draw
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if self.stopping.is_set():
                raise LoopFailed("stopped")
            handle_generation = self.handle.generation
            self._busy_update(active=+1)
            try:
                samples = self.handle.client.generate(prompts, n=s.group_size, temperature=s.temperature,
                                                      max_tokens=s.max_tokens, seed=seed,
                                                      stop_token_ids=list(s.stop_token_ids) or None,
                                                      ignore_eos=s.ignore_eos, priority=draw + 1)
                break
            except SidecarUnavailable as exc:
                if self.stopping.is_set():
                    raise LoopFailed("stopped") from None
                self.log(f"rollout draw {draw}: sidecar unavailable ({exc}); restarting it (attempt {attempt})")
                self._recover(handle_generation)
            finally:
                self._busy_update(active=-1)
        else:
            raise LoopFailed(f"rollout draw {draw}: the sidecar failed {MAX_ATTEMPTS} times")
        rows = [row for _, row in items for _ in range(s.group_size)]
        texts = [self.decode(sample.token_ids) for group in samples for sample in group]
        scored = self.score(draw, texts, rows)
        out: list[list[Rollout]] = []
        k = 0
        for (tokens, row), group in zip(items, samples):
            out.append([])
            for sample in group:
                total, parts = scored[k]
                out[-1].append(Rollout(row, tokens, sample, texts[k], float(total), parts))
                k += 1
        return out, attempt

    def _recover(self, seen_generation: int) -> None:
        """Bring the sidecar back unless someone already did (one restart for all the batches that noticed)."""
        with self.lock:
            if self.handle.generation != seen_generation or self.handle.refresh():
                return
            if self.handle.client.health():
                return  # a transient error: try again
            self.restarts += 1
            seconds = self.sync.restart()
            self.log(f"sidecar restarted from version {self.sync.latest_version} in {seconds:.1f} s")

    # ------------------------------------------------------------------ the trainer's side

    def take(self, version: int, timeout: float | None = None) -> RolloutBatch:
        """The next batch in order (waits for it), minus samples older than `version - max_staleness`."""
        start = time.perf_counter()
        deadline = None if timeout is None else start + timeout
        with self.cond:
            while self.next_take not in self.ready:
                if self.error is not None:
                    raise LoopFailed(f"rollout loop failed: {self.error}") from self.error
                remaining = None if deadline is None else deadline - time.perf_counter()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no rollout batch {self.next_take} within {timeout} s")
                self.cond.wait(timeout=remaining if remaining is not None else 1.0)
            batch = self.ready.pop(self.next_take)
            self.next_take += 1
        self.wait_s += time.perf_counter() - start
        floor = version - self.settings.max_staleness
        kept_groups = []
        for group in batch.groups:
            kept = [r for r in group if r.min_version >= floor]
            batch.dropped += len(group) - len(kept)
            for r in kept:
                batch.staleness[version - r.min_version] += 1
            if kept:
                kept_groups.append(kept)
        batch.groups = kept_groups
        return batch

    def release(self) -> None:
        """One more batch may start (called by push, or by the trainer for a batch it did not train on)."""
        self.slots.release()

    def push(self, weights: Mapping[str, Any], version: int) -> dict[str, Any]:
        """Push the weights of `version` into the sidecar (see the module docstring), then free a slot."""
        start = time.perf_counter()
        mode = "keep" if self.settings.inflight_updates else "wait"
        with self.lock:
            paused = False
            try:
                self.handle.client.pause(mode)
                paused = True
                self._busy_update(paused=True)
            except SidecarUnavailable:
                pass  # the push below finds the server gone and restarts it from these weights
            report = self.sync.push(weights, version)
            if report.restarted:
                self.restarts += 1
            elif paused:
                try:
                    self.handle.client.resume()
                except SidecarUnavailable:
                    self.restarts += 1
                    self.sync.restart()
            self._busy_update(paused=False)
            self.version = version
        record = {"version": version, "seconds": time.perf_counter() - start, "write_s": report.write_s,
                  "update_s": report.update_s, "restarted": report.restarted}
        self.pushes.append(record)
        self.release()
        return record

    def idle_fractions(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.started_at, 1e-9)
        return {"wall_s": wall, "trainer_wait_s": self.wait_s, "sidecar_busy_s": self.sidecar_busy_s(),
                "trainer_idle": self.wait_s / wall, "sidecar_idle": 1.0 - self.sidecar_busy_s() / wall}

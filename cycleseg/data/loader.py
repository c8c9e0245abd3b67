"""A stream of batches: one background thread reads, augments and (on CUDA) copies batches ahead of the
training step, in the order of a BatchOrder; its state is the order's state after the last batch handed
out, so resuming is exact."""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import torch

from .augment import augment
from .order import BatchOrder
from .source import H5Source

# The augmentation of a batch draws from (order seed, AUGMENT_STREAM, pass, position): its own RNG stream,
# reproducible on resume, independent of the order's draw (which uses (seed, pass)).
AUGMENT_STREAM = 7


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    """Put item on the queue unless the consumer stops first (close() joins a producer that may be
    waiting on a full queue, with an item or with an error)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            pass


class Loader:
    """Batches of (images uint8 (B, C, H, W), masks uint8 (B, H, W) or None), prepared ahead of the step
    by one background thread into a ring of preallocated buffers (pinned, and copied to the GPU on a
    side stream, when device is CUDA)."""

    def __init__(self, source: H5Source, order: BatchOrder, with_masks: bool = True, device="cpu",
                 prefetch: int = 3, flip: bool = False, scale: tuple[float, float] | None = None,
                 rotate: bool = False, policy: str = "none"):
        self.source, self.order, self.with_masks = source, order, with_masks
        self.device = torch.device(device)
        self.prefetch, self.flip, self.scale, self.rotate = max(1, prefetch), flip, scale, rotate
        self.policy = policy                                        # augment.POLICIES
        m, b = source.meta, order.batch_size
        cuda = self.device.type == "cuda"
        ring = self.prefetch + 2                                    # a buffer is refilled 2+ batches after use
        self._images = [torch.empty((b, m.height, m.width, m.channels), dtype=torch.uint8, pin_memory=cuda)
                        for _ in range(ring)]
        self._masks = [torch.empty((b, m.height, m.width), dtype=torch.uint8, pin_memory=cuda)
                       if with_masks else None for _ in range(ring)]
        self._state = order.state_dict()                            # state after the last batch handed out
        self._thread = None
        self.wait_time = 0.0                                        # seconds __next__ spent waiting

    # -- producer ---------------------------------------------------------------------------------------
    def _produce(self, q: queue.Queue, stop: threading.Event) -> None:
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        k = 0
        try:
            while not stop.is_set():
                before = self.order.state_dict()
                idx = self.order.next_indices()
                img_t, msk_t = self._images[k], self._masks[k]
                img, msk = img_t.numpy(), (msk_t.numpy() if msk_t is not None else None)
                self.source.read_into(idx, img, msk)
                if self.flip or self.scale or self.rotate or self.policy != "none":
                    rng = np.random.default_rng([self.order.seed, AUGMENT_STREAM, before["pass"], before["pos"]])
                    augment(img, msk, rng, self.flip, self.scale, self.rotate, self.policy)
                images, masks = img_t.permute(0, 3, 1, 2), msk_t                  # (B, C, H, W), (B, H, W)
                if side is not None:
                    with torch.cuda.stream(side):
                        images = images.to(self.device, non_blocking=True)
                        masks = masks.to(self.device, non_blocking=True) if masks is not None else None
                    side.synchronize()                              # the pinned buffer is free again
                _put(q, (images, masks, self.order.state_dict()), stop)
                k = (k + 1) % len(self._images)
        except BaseException as e:                                  # hand the error to the consumer
            _put(q, e, stop)

    def _start(self) -> None:
        self.order.load_state_dict(self._state)
        self._queue, self._stop = queue.Queue(self.prefetch), threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(self._queue, self._stop), daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    # -- consumer ---------------------------------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self):
        if self._thread is None:
            self._start()
        t0 = time.perf_counter()
        item = self._queue.get()
        self.wait_time += time.perf_counter() - t0
        if isinstance(item, BaseException):
            self.close()
            raise item
        images, masks, self._state = item
        if images.is_cuda:
            cur = torch.cuda.current_stream(self.device)
            images.record_stream(cur)
            if masks is not None:
                masks.record_stream(cur)
        return images, masks

    def state_dict(self) -> dict:
        return dict(self._state)

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self._state = dict(state)

    def __del__(self):
        self.close()

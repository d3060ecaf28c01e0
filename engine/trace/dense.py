"""UNet and VAE spans inside a render call: forward hooks on a generator replica's UNets and VAE
decoder (installed for the traced run only, removed when the trace closes). Consecutive UNet
evaluations of one module become one ``unet ×N`` span (base and refiner apart), each VAE decode
one ``vae decode`` span; they are drawn nested in the render call's span on the worker's track,
whose args say which rows the call rendered. One span per denoising loop, not per step: per-step
spans would cost ~90 bytes × steps × batches per sample (use --trace-kernels for that detail)."""
from __future__ import annotations

import threading
import time


class DenseSpans:
    def __init__(self):
        self.lock = threading.Lock()
        self.pending: dict[str, list] = {}
        """Worker key → finished child spans (name, start, end, args) of its call in progress."""
        self.open: dict[str, list] = {}
        """Worker key → the UNet run in progress [module id, name, start, end, evals, batch]."""
        self.handles: list = []
        self.seen: set[int] = set()

    def instrument(self, gen, key: str) -> None:
        """Hook ``gen``'s UNets (base, refiner) and VAE decoder; spans go to worker ``key``."""
        if id(gen) in self.seen:
            return
        self.seen.add(id(gen))
        for label, pipe in (("unet", getattr(gen, "base", None)), ("refiner unet", getattr(gen, "refiner", None))):
            unet = getattr(pipe, "unet", None)
            if unet is not None and hasattr(unet, "register_forward_hook"):
                self.handles += [unet.register_forward_pre_hook(self._unet(key, label, unet), with_kwargs=True),
                                 unet.register_forward_hook(self._unet_done(key))]
        dec = getattr(getattr(getattr(gen, "base", None), "vae", None), "decoder", None)
        if dec is not None and hasattr(dec, "register_forward_hook"):
            starts: dict[int, float] = {}

            def pre(module, args):
                self._close(key)
                starts[threading.get_ident()] = time.time()

            def post(module, args, out):
                a = starts.pop(threading.get_ident(), None)
                if a is not None:
                    x = args[0] if args else None
                    n = int(x.shape[0]) if hasattr(x, "shape") else 1
                    self._add(key, ("vae decode", a, time.time(), {"n": n}))

            self.handles += [dec.register_forward_pre_hook(pre), dec.register_forward_hook(post)]

    def _unet(self, key: str, label: str, module):
        def pre(mod, args, kwargs):
            sample = args[0] if args else kwargs.get("sample")
            n = int(sample.shape[0]) if hasattr(sample, "shape") else 1
            now = time.time()
            with self.lock:
                run = self.open.get(key)
                if run is not None and run[0] != id(module):
                    self._close_locked(key)
                    run = None
                if run is None:
                    self.open[key] = [id(module), label, now, now, 0, n]
                    run = self.open[key]
                run[4] += 1
        return pre

    def _unet_done(self, key: str):
        def post(mod, args, out):
            with self.lock:
                run = self.open.get(key)
                if run is not None:
                    run[3] = time.time()
        return post

    def _add(self, key: str, span: tuple) -> None:
        with self.lock:
            self.pending.setdefault(key, []).append(span)

    def _close(self, key: str) -> None:
        with self.lock:
            self._close_locked(key)

    def _close_locked(self, key: str) -> None:
        run = self.open.pop(key, None)
        if run is not None:
            _, label, a, last, evals, n = run
            self.pending.setdefault(key, []).append((f"{label} ×{evals}", a, last, {"evals": evals, "batch": n}))

    def take(self, key: str, end: float) -> list:
        """The child spans of ``key``'s call that just ended at ``end`` (an open UNet run ends there)."""
        with self.lock:
            self._close_locked(key)
            return sorted(self.pending.pop(key, []), key=lambda s: s[1])

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.seen.clear()

"""The ASE calculator: a thin layer over :class:`~e2former_calc.predictor.Predictor`."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from ..model import E2Former, E2FormerConfig
from ..model_file import load_model, save_model
from ..potentials import resolve_potential
from ..predictor import Predictor


class E2FormerCalculator(Calculator):
    """ASE calculator for an E2Former potential.

    Properties: ``energy``, ``free_energy`` (= energy), ``energies`` (per atom, summing to the
    energy), ``forces`` (eV/Å), and ``stress`` (eV/Å³, ASE sign and Voigt order) for fully
    periodic cells. All come from one forward and one backward pass.

    Build one with :meth:`from_file`, :meth:`from_pretrained` or :meth:`from_config`.

    Args:
        model: the network.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...
        dtype: ``"float64"`` (default: relaxation, phonons, tests) or ``"float32"`` (fast MD).
        skin: Verlet skin in Å: MD reuses the neighbour list while no pair can have entered the
            cutoff (atoms moved less than half of it, allowing for cell changes). Kept thin: 0.3 Å
            was the fastest of 0, 0.3, 0.5 and 1 Å for 864 Cu atoms at 1,000 K (209, 221, 218, 307
            ms per step) when every pair of the list went through the network (``prune=False``).
        metadata: what the potential file says about itself (kept for ``save``).
        quiet: do not print the one-line description of the loaded potential.
        neighbours: ``"auto"`` (a torch cell list on a GPU, matscipy on the CPU), ``"matscipy"``
            or ``"torch"``: who searches the neighbour list (the same pairs either way).
        recompute: ``"auto"`` (the convolutions' source products are redone in the backward
            pass), False (keep everything), or ``"blocks"``: trade time for memory per atom
            (every block's activations are recomputed in the backward pass, for about one more
            forward pass); the same numbers (:mod:`~e2former_calc.model.recompute`).
        keep_freed_memory: on the CPU, let the process reuse the memory a call freed (glibc's
            thresholds, :mod:`~e2former_calc.allocator`): per-atom cost stays flat up to the
            largest systems; False leaves the allocator alone.
        prune: ``"auto"`` (on the CPU, lists of 20,000 pairs or more), True or False: evaluate
            the network only on the Verlet list's pairs within the cutoff at each step, with a
            convolution plan built for them (:class:`~e2former_calc.forces.StepGraphs`).
    """

    def __init__(self, model: E2Former, device="auto", dtype="float64", skin: float = 0.3, metadata=None, quiet=False,
                 neighbours: str = "auto", recompute="auto", keep_freed_memory: bool = True, prune="auto",
                 **kwargs):
        super().__init__(**kwargs)
        self.implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
        self.predictor = Predictor(model, device=device, dtype=dtype, skin=skin, neighbours=neighbours,
                                   recompute=recompute, keep_freed_memory=keep_freed_memory, prune=prune)
        # the weights as given (e.g. float64 from the file), for save(): the predictor's copy may be float32
        self._weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.metadata = dict(metadata or {})
        if not quiet:
            label = self.metadata.get("name", "E2Former potential")
            print(
                f"e2former-calc: {label}, species {', '.join(self.predictor.symbols)}, cutoff {self.cutoff:g} Å, "
                f"{str(self.predictor.dtype).replace('torch.', '')} on {self.predictor.device}",
                file=sys.stderr,
            )

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def from_file(cls, path, device="auto", dtype="float64", **kwargs) -> "E2FormerCalculator":
        """Load a potential file (no code is executed)."""
        model, metadata = load_model(path, device="cpu")
        metadata.setdefault("name", Path(path).stem)
        return cls(model, device=device, dtype=dtype, metadata=metadata, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, device="auto", dtype="float64", **kwargs) -> "E2FormerCalculator":
        """A shipped potential by name (see :func:`potential_folders`)."""
        return cls.from_file(resolve_potential(name), device=device, dtype=dtype, **kwargs)

    @classmethod
    def from_config(cls, config: E2FormerConfig | str | None = None, species=("H", "C", "N", "O"), seed: int = 0,
                    e0=None, device="auto", dtype="float64", **kwargs) -> "E2FormerCalculator":
        """An untrained model (random weights from ``seed``): for tests, benchmarks and training.

        ``config`` is an :class:`E2FormerConfig`, a preset name or None (``"small"``);
        ``species`` are symbols or atomic numbers.
        """
        from ase.data import atomic_numbers

        if config is None or isinstance(config, str):
            config = E2FormerConfig.preset(config or "small")
        numbers = [atomic_numbers[s] if isinstance(s, str) else int(s) for s in species]
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = E2Former(config, numbers, e0)
        finally:
            torch.random.set_rng_state(generator_state)
        metadata = {"name": f"UNTRAINED E2Former ({'/'.join(str(s) for s in species)}, seed {seed})"}
        return cls(model, device=device, dtype=dtype, metadata=metadata, **kwargs)

    def save(self, path, provenance=None) -> Path:
        """Write the potential to ``path`` (the model file format of :mod:`e2former_calc.model_file`)
        with the weights it was built from, in their dtype (a calculator running in float32 on a
        float64 potential still writes the float64 weights)."""
        info = dict(self.metadata.get("provenance", {}))
        info.update(provenance or {})
        model = copy.deepcopy(self.predictor.model).to("cpu")
        dtype = next(iter(self._weights.values())).dtype
        model = model.to(dtype)
        model.load_state_dict(self._weights)
        return save_model(model, path, info)

    @property
    def cutoff(self) -> float:
        """Cutoff radius of the potential in Å."""
        return self.predictor.cutoff

    @property
    def model(self) -> E2Former:
        return self.predictor.model

    # -- ASE --------------------------------------------------------------------------------
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if "stress" in properties and not self.atoms.pbc.all():
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError("stress is defined for fully periodic cells only")
        # forces (and stress) come from the same backward pass: always fill them in
        result = self.predictor.compute(self.atoms, forces=True, stress=bool(self.atoms.pbc.all()))
        self.results.update({k: (np.asarray(v) if not isinstance(v, float) else v) for k, v in result.items()})

"""The one quantization spec that drives training (fake quantization) and export (integer weights)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class QuantConfig:
    """How the MLP is quantized. Training and export both read this, so they cannot drift apart."""

    enabled: bool = True
    """Simulate low-bit arithmetic while training. False gives the fp32 baseline on the same code path."""
    weight_bits: int = 8
    """Bits per weight (2..8): symmetric, one scale per output channel."""
    activation_bits: int = 8
    """Bits per activation (2..8): one scale and zero point per tensor; unsigned after a ReLU."""
    fused: bool = True
    """Fuse each Linear with its ReLU: quantize the ReLU output ([0, max]). False quantizes the signed Linear output,
    then applies the ReLU, as an unfused integer model would."""
    observer_momentum: float = 0.01
    """Weight of each new batch in the moving min/max of an activation observer (1.0 keeps only the last batch)."""
    quant_start_step: int = 500
    """Training step at which fake quantization starts; steps before it train in fp32 while observers warm up.
    Starting at 0 can blow up the deep 8x256 MLP: activation ranges grow ~10x per layer and density collapses
    (measured on fern, benchmarks/qat_warmup_gpu.txt)."""
    freeze_observers_step: int = 10000
    """Training step from which activation ranges stop moving (negative: never freeze)."""

    def __post_init__(self) -> None:
        for name in ("weight_bits", "activation_bits"):
            bits = getattr(self, name)
            if not 2 <= bits <= 8:
                raise ValueError(f"QuantConfig.{name} must be between 2 and 8, got {bits}")
        if not 0.0 < self.observer_momentum <= 1.0:
            raise ValueError(f"QuantConfig.observer_momentum must be in (0, 1], got {self.observer_momentum}")
        if self.quant_start_step < 0:
            raise ValueError(f"QuantConfig.quant_start_step must be >= 0, got {self.quant_start_step}")
        if self.freeze_observers_step == 0:
            raise ValueError("QuantConfig.freeze_observers_step 0 would never calibrate the observers: use > 0, or -1")

    @property
    def weight_qmax(self) -> int:
        """Largest weight code; codes are symmetric in [-qmax, qmax]."""
        return 2 ** (self.weight_bits - 1) - 1

    @property
    def activation_qmax(self) -> int:
        """Largest activation code; codes are in [0, qmax] with a zero point."""
        return 2**self.activation_bits - 1

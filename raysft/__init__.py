"""raysft: sweeps of composable sparse fine-tunings (SFTs) of multilingual encoders."""

__version__ = "0.1.0"

"""Getting a trial out of raysft as files: :mod:`raysft.export.run` (`raysft export`: a trial's task delta, its
language SFTs and :mod:`raysft.export.card`, the model card), :mod:`raysft.export.apply` (`raysft apply`: base model +
SFTs → a Hugging Face folder); both write through :mod:`raysft.export.staging` (whole or not at all)."""

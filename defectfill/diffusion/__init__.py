"""DefectFill, the primary synthesizer: SD-2-inpainting fine-tuned with LoRA + a learned token
(trainer, losses, Low-Fidelity Selection, models, config, the synthesizer and the embedded fabric base)."""

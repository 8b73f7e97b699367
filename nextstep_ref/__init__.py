"""From-scratch PyTorch reference of NextStep-1.

Torch-free modules (import them without torch): config, sampling, options, noise, latents, prompt, tokenizer,
weights. Torch modules: backbone, head, vae, model, sampler, checkpoint, pipeline.
"""

"""Training machinery shared by the encoder and decoder stages, one concern per module (torchtune's
``training/`` package is the model):

- ``distributed``  the process group, DeepSpeed's config and engine, seeds, AdamW, warmup + cosine schedule;
- ``checkpoints``  weights, resumable and durable checkpoints, SIGTERM -> checkpoint and exit;
- ``safe_load``    the unsafe-pickle scan before anything loads a checkpoint;
- ``history``      the training log (JSONL), live TensorBoard, progress lines;
- ``loop``         plan_steps and run_steps: the step loop both stages run;
- ``data``, ``augment``  pair batches and their augmentation.
"""

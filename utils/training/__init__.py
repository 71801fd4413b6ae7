"""The pieces of a training run that `train.py` puts together (SPEC §4.2):

- `batches`: each process's endless, resumable stream of batches and the fixed media batch;
- `trainer`: the model, loss, optimiser, scheduler and one training step;
- `state`: seeds, random generators and the checkpoint dict, written and read back (exact resumption);
- `stopping`: SIGINT / SIGTERM end the run after the current step, with a checkpoint;
- `media`: the pictures of a run (reconstruction grid, GIFs, action sheets).
"""

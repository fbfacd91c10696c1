"""A Hugging Face GPT-2 config in muP, from the sweep to a checkpoint `from_pretrained` reloads.

    mutransfer sweep examples/sweep-gpt2.toml
    mutransfer transfer examples/sweep-gpt2.toml --out gpt2-target.json
    python examples/hf_gpt2.py examples/sweep-gpt2.toml gpt2-target.json gpt2-target/

`make` is the factory the sweep config names. The script trains the target with the transferred
values under the sweep's protocol, saves it with `mutransfer.hf.save_pretrained`, reloads it with
plain `transformers.AutoModelForCausalLM.from_pretrained` and checks that the logits agree.
"""

import sys

import torch

import mutransfer
import mutransfer.hf
from mutransfer.sweep.experiment import Experiment

# the base shape: GPT-2 at width 64, without dropout (a random mask per call blurs comparisons)
make = mutransfer.hf.factory(
    "gpt2", n_embd=64, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
)


def main(config_file: str, transfer_file: str, out: str) -> float:
    """Train, save and reload the target; return the largest logit difference after reloading."""
    from transformers import AutoModelForCausalLM

    experiment = Experiment(mutransfer.load_config(config_file))
    t = mutransfer.load_transfer(transfer_file)
    model, optimizer = t.build()  # muP-initialised, with the tuned per-layer learning rates
    run = experiment.fit(model, optimizer, t.hparams)
    print(f"target {dict(t.shape)}: validation loss {run.val_loss:.4f} after {run.steps} steps")
    mutransfer.hf.save_pretrained(model, t.plan, out)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    x, _ = experiment.data.batch(0, 4, split="val")
    with torch.no_grad():
        gap = (reloaded(x).logits - model(x).logits).abs().max().item()
    print(f"saved to {out}; from_pretrained's logits differ from the trained model's by {gap:.1e} at most")
    return gap


if __name__ == "__main__":
    main(*sys.argv[1:4])

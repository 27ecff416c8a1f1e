"""ELECTRA replaced-token detection: a small generator is trained with MLM on 15% [MASK]ed
positions; its samples fill those positions, and the discriminator predicts for every token
whether it was replaced. Loss = MLM(generator) + lambda * BCE(discriminator), lambda = 50 as in
the paper; gradients do not flow through the sampling. (Unlike the paper, the generator and
discriminator do not share embeddings here.) As the generator improves its samples get harder to
detect, so the detection loss, and with it the total, can rise while both models learn: read
rtd_recall and disc_loss against the base rate's entropy, H(replaced_fraction).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from foundations.objectives.base import TRAIN
from foundations.objectives.losses import weighted_cross_entropy, weighted_mean
from foundations.objectives.mlm import MaskedLM


class ReplacedTokenDetection(MaskedLM):
    name = "electra"
    replace = (1.0, 0.0)   # every selected token becomes [MASK] for the generator

    def prepare(self, rows, step, stream=TRAIN):
        batch = super().prepare(rows, step, stream)
        batch["selected"] = batch["weights"] > 0
        return batch

    def model_args(self, batch):
        return (batch["inputs"], batch["selected"], batch["segments"], batch["padding"])

    def loss(self, apply, params, batch, rng):
        (gen_logits, disc_logits, corrupted), aux = apply(params, rng, *self.model_args(batch))
        targets = batch["targets"]
        mlm_loss, mlm_accuracy = weighted_cross_entropy(gen_logits, targets, batch["weights"])
        replaced = corrupted != targets
        disc = optax.sigmoid_binary_cross_entropy(disc_logits.astype(jnp.float32),
                                                  replaced.astype(jnp.float32))
        disc_loss = weighted_mean(disc, batch["padding"])
        flagged = disc_logits > 0
        rtd_accuracy = weighted_mean(flagged == replaced, batch["padding"])
        # accuracy alone flatters: answering "original" everywhere scores 1 - replaced_fraction.
        # Recall, the share of replaced tokens flagged, is 0 for such a discriminator.
        rtd_recall = weighted_mean(flagged, replaced & batch["padding"])
        loss = mlm_loss + self.config.objective.disc_weight * disc_loss
        metrics = {"mlm_loss": mlm_loss, "disc_loss": disc_loss, "mlm_accuracy": mlm_accuracy,
                   "rtd_accuracy": rtd_accuracy, "rtd_recall": rtd_recall,
                   "replaced_fraction": weighted_mean(replaced, batch["padding"])}
        return self.with_aux(loss, aux, metrics)

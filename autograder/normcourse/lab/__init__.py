"""The course's laboratory: torch models, training loops, measurements and every chapter's experiment
driver, each covered by a unit test.

Layering (lower never imports higher): :mod:`normcourse.reference` (numpy only) <- ``normcourse.lab``
(torch) <- :mod:`normcourse.book` (figures and tables for the chapters). The grading tools
(:mod:`normcourse.grading`) import the reference and nothing of this package.

Modules:

- :mod:`~normcourse.lab.models`: MLPs and small CNNs with a choice of normalization, the digits data,
  a plain training loop;
- :mod:`~normcourse.lab.measurements`: Santurkar et al.'s measurements (internal covariate shift,
  landscape probes along the gradient);
- :mod:`~normcourse.lab.transformer`: a tiny Transformer with Post-LN, Pre-LN, DeepNorm, Admin, sandwich-LN
  and QK-norm blocks;
- :mod:`~normcourse.lab.placements`: per-block gradient profiles of Post-LN and Pre-LN over seeds, the
  amplification effect (output change after one step) and residual-stream growth;
- :mod:`~normcourse.lab.transformer_training`: several tiny Transformers trained at once as one vmapped model;
- :mod:`~normcourse.lab.saturation`: attention-logit growth and softmax saturation, with and without QK-norm;
- :mod:`~normcourse.lab.conditional`: conditional normalization (AdaIN, FiLM, adaLN-Zero);
- :mod:`~normcourse.lab.experiments`: the larger experiment drivers of the chapters;
- :mod:`~normcourse.lab.replicas`: several seeds trained at once as one batched model (chapters 1-3);
- :mod:`~normcourse.lab.timing`: fair alternating timings (chapter 4's LayerNorm versus RMSNorm);
- :mod:`~normcourse.lab.batchnorm_practice`: chapter 8's drivers (train/eval bugs, frozen BN, folding, ghost
  batches, Batch Renormalization, dropout's variance shift, weight decay with scale invariance);
- :mod:`~normcourse.lab.normalization_free`: chapter 9's layers and drivers (residual stacks, SkipInit, Fixup,
  Weight Standardization, NF blocks with adaptive gradient clipping, Dynamic Tanh).
"""

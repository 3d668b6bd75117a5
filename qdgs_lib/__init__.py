"""qdgs: Quality-Diversity Generative Sampling (Chang et al., AAAI 2024) as a library.

QDGS samples a biased generator uniformly across a measure space defined by text prompts, and
turns what it finds into a balanced training set. Data flows one way::

    latents --generator--> images in [0, 1] --PromptScorer (CLIP + prompt pairs)-->
    objective, measures (+ jacobians) --QDSearch (pyribs)--> archive of elites
    --sampling--> image folders + manifest --train--> model --evaluate--> tables --plots--> figures

By stage:

* generators: ``generators.wrapped.WrappedGenerator`` (your own network or function),
  ``generators.stylegan2`` / ``generators.stylegan3`` (NVIDIA's pickles, read as data),
  ``generators.shapes_vae`` and ``generators.toy_faces`` (the offline stand-ins);
* scoring: ``clip.create_clip`` (open_clip by name + local weights; ``hf_clip`` for
  transformers checkpoints), ``scoring.PromptScorer``, ``image_prompts.ImagePrompt``
  (example images in a prompt's place), ``measures`` (what each archive axis means);
* search: ``search.QDSearch`` and ``search.SearchConfig`` (CMA-MAEGA, CMA-MAE, CMA-ME,
  MAP-Elites, random sampling; checkpointed and resumable);
* datasets: ``sampling`` (bins, balanced picks, K-means identities, latent augmentations,
  image folders), ``align`` and ``mtcnn`` (face crops);
* training and evaluation: ``train``, ``models`` (IR-ResNet, AdaFace, shapes classifier),
  ``augment``, ``evaluate`` (verification benchmarks), ``recognition`` (notebooks 03-04);
* the notebooks' steps and verdicts: ``shapes_poc``, ``face_synthesis``, ``claims``,
  ``plots``, ``explorer``; run plumbing: ``profiles``, ``notebook``, ``assets``, ``paths``.

The README has the two commands (reproduce, test), the profiles and the results; the numbered
notebooks tell the paper's story over these calls, and ``notebooks/guide_own_generator.ipynb``
applies them to a generator of your own.
"""

import torch as _torch

# The loaders rely on torch.load(weights_only=True), which torch < 2.6 lets a crafted file
# bypass (CVE-2025-32434).
if _torch.__version__ < "2.6":
    raise ImportError(f"qdgs_lib needs torch >= 2.6 (found {_torch.__version__}): older "
                      "versions' torch.load(weights_only=True) is not safe on untrusted files")

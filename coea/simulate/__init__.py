"""Closed-loop A/B simulation: ``coea simulate`` (docs/simulate.md).

    world     the environment: categories in a latent space, users with core and latent interests,
              discovery by exposure, the organic feed and clicks from RNG streams keyed by (seed, day, stream)
    policies  the Catalogue an arm may know, the Policy protocol, the non-LLM arms
    coea_arm  the LLM arms (CoEA, w/o KL, w/o R-LLM, Google-v1) on a daily `coea cycle`
    metrics   per day and arm: 7D-NIEP, GTV, slot CTR, discovery rate, long-tail coverage, A.4 metrics
    run       simulate(cfg, out_dir): seeds x days x arms, resumable, days.jsonl
    report    results.md, plots, one offline W&B run per arm, the KL question
"""

"""`python -m imagegen_pipeline.lpips_weights`: the install-time conversion of the pinned LPIPS weights to
safetensors (`make install` and deploy/Dockerfile run it). The work is in `ml/metrics/lpips_weights.py`; this entry
point lives outside the metrics package, which imports that module itself (running it there with -m warns)."""

import sys

from imagegen_pipeline.ml.metrics.lpips_weights import main

if __name__ == "__main__":
    sys.exit(main())

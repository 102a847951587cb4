"""Named evaluation protocols: how many samples are judged against how many real images. FID falls as N grows,
so a figure only compares with figures of the same protocol, and every report records which one it used."""

PROTOCOLS: dict[str, dict[str, int]] = {
    "quick": {"num_samples": 1000, "num_real": 1000},  # the asset default: minutes on 2 CPU cores
    # published FIDs: 10k samples against the 10k official test images (MNIST/Fashion-MNIST keep them in val)
    "paper": {"num_samples": 10_000, "num_real": 10_000},
}

"""`nextstep-trt bench`: stage timings, ratios, roofline, memory and parity of every backend in one run."""

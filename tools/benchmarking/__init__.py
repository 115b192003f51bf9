"""The machinery of tools/benchmark.py, by job; the command parses its arguments and calls driver.drive or, in a
worker process (`python tools/benchmark.py --worker NAME ...`), worker.worker.

driver       runs prepare, then each measure in a fresh process (rounds interleaved), and prints the report
worker       one measure in this process; its result on stdout as one `BENCHMARK_JSON ` line
prepare      the weights, compared images, reference logits and export that every other worker reads
paddle_measures / torch_measures / data_measures   what is timed
timing       an eval measure's images/s, logits on the compared images and latency profile
stages       the per-stage profile (--stages)
machine      CPU, versions, load, the GEMM rate and the model's compute-bound limit
report       images/s, ratios, agreement, the tables
targets      the deployment targets judged on the rows, each beside the CPU's compute-bound limit
settings     what all of them share: the measures, the config, the random inputs, the timer
workdir      the files in the shared work folder

This package sits beside t2tvit, not in it: it imports tools/torch_reference.py, and the library never imports
torch. Nothing here loads Paddle or torch at import: each worker loads only the framework it measures (torch: the
torch measures and the GEMM rate, which is PyTorch's).
"""

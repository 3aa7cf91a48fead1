"""Rule evaluate: test-split metrics of one model against the IHC-derived ratio."""
import pandas as pd

from tumormap.evaluate import (evaluation_table, plot_evaluation, region_detection_metrics, regression_metrics,
                               tumor_detection_metrics)
from tumormap.io import read_json, write_json
from tumormap.proportion import bag_table, proportion_metrics
from tumormap.logs import setup_logging
from tumormap.split import SplitError

log = setup_logging(snakemake.log[0])
if snakemake.params.split_problem:
    raise SplitError(snakemake.params.split_problem)
predictions = [pd.read_parquet(p) for p in snakemake.input.predictions]
table = evaluation_table(predictions,
                         [pd.read_parquet(p) for p in snakemake.input.ground_truth], snakemake.params.test_samples)
metrics = regression_metrics(table["tumor_ratio"], table["predicted_ratio"],
                             table["predicted_bin"] if "predicted_bin" in table else None)
metrics.update(tumor_detection_metrics(table["tumor_ratio"], table["predicted_ratio"], snakemake.params.tumor_threshold))
regions = {s: pd.read_parquet(p) for s, p in zip(snakemake.params.region_samples, snakemake.input.regions)}
metrics.update(region_detection_metrics(predictions, regions, snakemake.params.tumor_threshold))
card = read_json(snakemake.input.card)
if card["kind"] == "llp":  # interval metrics over the test bags (Okuo et al.)
    bags = bag_table(pd.concat(predictions), pd.concat([pd.read_parquet(p) for p in snakemake.input.ground_truth]),
                     card, regions)
    metrics["proportion"] = proportion_metrics(bags, card["options"]["edges"])
    metrics["proportion"]["bags"] = bags.to_dict("records")
metrics["model"] = snakemake.wildcards.model
metrics["test_samples"] = list(snakemake.params.test_samples)
log.info("%s on the test split: %s", snakemake.wildcards.model, metrics)
write_json(metrics, snakemake.output.metrics)
plot_evaluation(table, metrics, snakemake.output.plot, snakemake.wildcards.model)

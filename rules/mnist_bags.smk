# MNIST-bag check of the distribution-pooling MIL model: `snakemake mnist_bags`.
# Needs config/mnist_bags.yaml merged into config (configfile:).

rule mnist_bags:
    input:
        images=f"{config['mnist_bags']['data_dir']}/t10k-images-idx3-ubyte.gz",
        labels=f"{config['mnist_bags']['data_dir']}/t10k-labels-idx1-ubyte.gz",
    output:
        metrics="results/mnist_bags/metrics.json",
        loss_curve="results/mnist_bags/loss_curve.png",
        model="results/mnist_bags/model.pt",
        history="results/mnist_bags/history.csv",
    params:
        positive_digit=_mnist_bags("positive_digit"),
        negative_digit=_mnist_bags("negative_digit"),
        bag_size=_mnist_bags("bag_size"),
        test_fraction=_mnist_bags("test_fraction"),
        train_bags_per_epoch=_mnist_bags("train_bags_per_epoch"),
        test_bags=_mnist_bags("test_bags"),
        batch_size=_mnist_bags("batch_size"),
        epochs=_mnist_bags("epochs"),
        lr=_mnist_bags("lr"),
        lr_schedule=_mnist_bags("lr_schedule"),
        weight_decay=_mnist_bags("weight_decay"),
        n_features=_mnist_bags("n_features"),
        n_bins=_mnist_bags("n_bins"),
        sigma=_mnist_bags("sigma"),
        dropout=_mnist_bags("dropout"),
        seed=_mnist_bags("seed"),
        device=_mnist_bags("device"),
    threads: _mnist_bags("threads")
    resources:
        gpu=1,
    log:
        "logs/mnist_bags.log",
    benchmark:
        "benchmarks/mnist_bags.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/mnist_bags.py"

"""The loops of training and evaluation, written over parts handed to them (model, loaders, runtime, ...)."""
import paddle

from .runtime import Timer


@paddle.no_grad()
def evaluate(model, loader, runtime, log=None, print_every=0):
    """Returns (top1, top5, images) over every rank's share of the set."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = seen = 0
    timer = Timer()
    read_time = 0.0
    for i, batch in enumerate(loader):
        images, labels = batch["image"], batch["label"]
        read_time += timer.lap()
        logits = model(images)
        top5 = paddle.topk(logits.astype("float32"), k=min(5, logits.shape[-1]), axis=-1)[1]
        hits = (top5 == labels.reshape([-1, 1]).astype(top5.dtype)).astype("int64")
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.sum())
        seen += labels.shape[0]
        timer.lap()
        if log and print_every and (i + 1) % print_every == 0:
            log.info(f"Step [{i + 1}/{len(loader)}], acc: {correct1 / seen:.4f}, read_time: {read_time / (i + 1):.4f}")
    correct1, correct5, seen = runtime.all_sum([correct1, correct5, seen])
    if was_training:  # Paddle 2.6's Layer.train() takes no argument
        model.train()
    return correct1 / max(seen, 1), correct5 / max(seen, 1), int(seen)

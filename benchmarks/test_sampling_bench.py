"""Real batch sampling: per-class draws without replacement, gather from the uint8 store,
normalisation on the device (the real stream's batch of one chunk of classes)."""
from benchmarks.settings import Setting, fastdm_side

# a setting per size; the chunk covers all its classes
SIZES = {"tiny": Setting(3, 20, 3, 16, 1, "ConvNetD2", batch_real=8),
         "small": Setting(100, 500, 3, 32, 10, "ConvNet"),
         "large": Setting(1000, 1300, 3, 64, 10, "ConvNetD4")}


def test_real_batch(timed, device, size):
    s = SIZES[size]
    engine = fastdm_side(s, s.per_class, device, class_chunk=s.classes)

    def real_batch():
        images, counts = engine.stream.take((7, 0, s.classes))
        return engine.data.normalize(images, engine.device), counts
    images, counts = timed(real_batch)
    assert images.shape[0] == int(counts.sum()) == s.classes * min(s.batch_real, s.per_class)

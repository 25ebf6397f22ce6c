"""Names of the internal columns that travel between the stages and never reach the output.

A plain module (no torch, no Ray) so the driver-side code that reads them stays light.
"""

PIXELS = "__tis_pixels"  # uint8 model-ready pixels, from the fetch stage
FETCH_ERROR = "__tis_fetch_error"  # the row's error so far (caption or image), from the fetch stage
TRUNCATED = "__tis_truncated"  # the caption was cut to the model's context
RUNTIME = "__tis_runtime"  # "device/dtype" of the scorer that scored the row

# A WebDataset sample, as the shard reader hands it on (see `shard_source`):
IMAGE_BYTES = "__tis_image"  # the sample's image entry, bytes
CAPTION = "__tis_caption"  # its caption: the txt entry or a json field
READ_ERROR = "__tis_read_error"  # what went wrong reading the sample (a cut shard, a missing entry)

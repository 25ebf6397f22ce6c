"""Names of the internal columns that travel between the stages and never reach the output.

A plain module (no torch, no Ray) so the driver-side code that reads them stays light.
"""

PIXELS = "__tis_pixels"  # uint8 model-ready pixels, from the fetch stage
FETCH_ERROR = "__tis_fetch_error"  # the row's error so far (caption or image), from the fetch stage
TRUNCATED = "__tis_truncated"  # the caption was cut to the model's context
RUNTIME = "__tis_runtime"  # "device/dtype" of the scorer that scored the row

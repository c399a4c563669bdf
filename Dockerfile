# Runtime image for training, TensorBoard and export on GPUs (TensorFlow 2.21 with CUDA).
#   docker build -t dc3 .
# Commands (README, "GPUs and Docker"): the image runs as the unprivileged user "dc3" (uid 1000);
# give --user "$(id -u):$(id -g)" so that files written into mounted folders belong to you.
#   docker run --gpus all --rm --user "$(id -u):$(id -g)" -v "$PWD/data:/dc3/data" \
#     -v "$PWD/experiments:/dc3/experiments" dc3 python mean_teacher.py --dataset plankton.1@-1-10
# Tests are not in the image (no test dependencies): run them from a checkout with `make test`.
FROM tensorflow/tensorflow:2.21.0-gpu

WORKDIR /dc3
COPY requirements.txt ./
# The base image already has TensorFlow 2.21; pip keeps it and adds the rest of the runtime.
RUN python -m pip install --no-cache-dir -r requirements.txt
COPY . .
RUN python -m pip install --no-cache-dir --no-deps --editable . \
    && useradd --create-home --uid 1000 dc3 \
    && mkdir -p /dc3/data /dc3/experiments \
    && chown dc3:dc3 /dc3/data /dc3/experiments
# Any uid may run the image (--user): the CPU kernel cache must not need a home folder.
ENV ML_DATA=/dc3/data DC3_KERNEL_DIR=/tmp/dc3-kernels
USER dc3
EXPOSE 6006
CMD ["python", "mean_teacher.py", "--helpshort"]

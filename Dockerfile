# GPU image: TensorFlow 2.21 with CUDA. Build:  docker build -t dc3 .
# Run:  docker run --gpus all --rm -v "$PWD/data:/dc3/data" -v "$PWD/experiments:/dc3/experiments" \
#         dc3 python mean_teacher.py --dataset plankton.1@-1-10 --train_dir experiments ...
FROM tensorflow/tensorflow:2.21.0-gpu

WORKDIR /dc3
COPY requirements.txt requirements-dev.txt ./
# The base image already has TensorFlow; pip keeps it and adds the rest.
RUN python -m pip install --no-cache-dir -r requirements-dev.txt
COPY . .
RUN python -m pip install --no-cache-dir --no-deps --editable .
ENV ML_DATA=/dc3/data TF_CPP_MIN_LOG_LEVEL=2
CMD ["make", "test"]

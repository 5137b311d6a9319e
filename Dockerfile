# A Greengrass v2 core in a container, ready for com.awsiotblog.DeviceDefenderCustom (the article's setup).
#
# Why not `FROM amazon/aws-iot-greengrass:2.5.3-0` alone: that official image (the newest tag on Docker Hub)
# runs nucleus 2.5.3 on Amazon Linux 2 with Python 3.7/3.8. The component needs Python >= 3.9, and its
# access control uses {iot:thingName}, which needs nucleus >= 2.6.0. So this file keeps the official
# image's entrypoint and sudoers fix (same environment variables, same behaviour) and puts them on
# Amazon Linux 2023 (Python 3.9) with a newer nucleus, as aws-greengrass/aws-greengrass-docker does today.
# Pin amazonlinux to a dated tag (e.g. 2023.x.yyyymmdd.0) or a digest for reproducible images.
#
# Build:
#   docker build -t ddcustom-greengrass:2.12.4 .
#
# Run (provisions the thing, its role alias and the token exchange role on first start):
#   docker run --init -d --name aws-iot-greengrass \
#     -e AWS_REGION=us-east-1 \
#     -e PROVISION=true \
#     -e THING_NAME=GpuEdgeDevice1 \
#     -e THING_GROUP_NAME=GpuEdgeDevices \
#     -e TES_ROLE_NAME=GreengrassV2TokenExchangeRole \
#     -e TES_ROLE_ALIAS_NAME=GreengrassCoreTokenExchangeRoleAlias \
#     -e COMPONENT_DEFAULT_USER=ggc_user:ggc_group \
#     -v "$HOME/.aws/:/root/.aws/:ro" \
#     ddcustom-greengrass:2.12.4
#   Add `--gpus all` (NVIDIA Container Toolkit) for GPU metrics. Remove the mounted credentials after the
#   first start: from then on the core uses its certificate and the token exchange role.
#
# Then deploy the component with the nucleus option interpolateComponentConfiguration set to true
# (docs/packaging.md). Simulate mining from the host:
#   docker exec aws-iot-greengrass sh -c 'echo 85 > /var/gpu_load_fb; echo 180 > /var/gpu_inference_fb'

ARG OFFICIAL_IMAGE=amazon/aws-iot-greengrass:2.5.3-0
ARG BASE_IMAGE=amazonlinux:2023

FROM ${OFFICIAL_IMAGE} AS official

FROM ${BASE_IMAGE}

ARG GREENGRASS_RELEASE_VERSION=2.12.4
ARG GREENGRASS_ZIP_FILE=greengrass-${GREENGRASS_RELEASE_VERSION}.zip
ARG GREENGRASS_RELEASE_URI=https://d2s8p88vqu9w66.cloudfront.net/releases/${GREENGRASS_ZIP_FILE}

LABEL greengrass-version=${GREENGRASS_RELEASE_VERSION}

# The official image's settings; the entrypoint reads them (defaults mean "installer default").
ENV TINI_KILL_PROCESS_GROUP=1 \
    GGC_ROOT_PATH=/greengrass/v2 \
    PROVISION=false \
    AWS_REGION=us-east-1 \
    THING_NAME=default_thing_name \
    THING_GROUP_NAME=default_thing_group_name \
    TES_ROLE_NAME=default_tes_role_name \
    TES_ROLE_ALIAS_NAME=default_tes_role_alias_name \
    COMPONENT_DEFAULT_USER=default_component_user \
    DEPLOY_DEV_TOOLS=false \
    INIT_CONFIG=default_init_config \
    TRUSTED_PLUGIN=default_trusted_plugin_path \
    THING_POLICY_NAME=default_thing_policy_name

COPY --from=official /greengrass-entrypoint.sh /modify-sudoers.sh /

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Greengrass needs Java; the component needs python3 (3.9 here) with venv and pip for its Install step.
# hadolint ignore=DL3041
RUN dnf install -y --setopt=install_weak_deps=False \
        tar unzip wget sudo procps-ng which shadow-utils python3 python3-pip \
        java-11-amazon-corretto-headless && \
    dnf clean all && rm -rf /var/cache/dnf && \
    wget -q "${GREENGRASS_RELEASE_URI}" && \
    mkdir -p /opt/greengrassv2 "${GGC_ROOT_PATH}" && \
    unzip -q "${GREENGRASS_ZIP_FILE}" -d /opt/greengrassv2 && rm "${GREENGRASS_ZIP_FILE}" && \
    chmod 0755 /greengrass-entrypoint.sh /modify-sudoers.sh && \
    /modify-sudoers.sh && \
    python3 -c "import sys, venv; sys.exit(sys.version_info < (3, 9))"

# The component user (the installer reuses it) and the article's feedback files with normal values:
# GPU load per inference 25 (%), average inference time 45 ms, under the profile's 40 and 100.
# Owned by root, readable by ggc_group, writable by nobody else.
RUN groupadd --system ggc_group && \
    useradd --system --create-home --gid ggc_group ggc_user && \
    printf '25\n' > /var/gpu_load_fb && \
    printf '45\n' > /var/gpu_inference_fb && \
    chown root:ggc_group /var/gpu_load_fb /var/gpu_inference_fb && \
    chmod 0640 /var/gpu_load_fb /var/gpu_inference_fb

# No USER: the nucleus runs as root (the image default) and starts components as ggc_user.
ENTRYPOINT ["/greengrass-entrypoint.sh"]

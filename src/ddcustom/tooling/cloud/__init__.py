"""The cloud side as code: provisioning, alert routing, quarantine and the fleet deployment.

boto3 is imported only in this package (and only where a call is made), so the device never needs it.
"""

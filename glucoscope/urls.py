from django.contrib import admin
from django.urls import include, path
from django_otp.admin import OTPAdminSite
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from api import health
from api.urls import nightscout_v1, v1

# The admin needs password and TOTP code (django-otp); an unverified session is treated as not staff.
# Every model registered with admin.site is served by this OTP-enforcing class.
admin.site.__class__ = OTPAdminSite

# Unmatched API URLs answer JSON like every other API error (api/errors.py).
handler404 = "api.errors.not_found"
# A database outage outside a DRF view answers 503, not a 500 page (api/errors.py).
handler500 = "api.errors.server_error"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", health.HealthApi.as_view(), name="healthz"),
    path("readyz", health.ReadinessApi.as_view(), name="readyz"),
    path("metrics", health.MetricsApi.as_view(), name="metrics"),
    path("api/v1/", include((v1, "api"), namespace="v1")),
    path("nightscout/api/v1/", include((nightscout_v1, "nightscout"), namespace="nightscout")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("", include("glucoscope.web.urls")),
]

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from api import views
from api.urls import nightscout_v1, v1

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", views.HealthApi.as_view(), name="healthz"),
    path("api/v1/", include((v1, "api"), namespace="v1")),
    path("nightscout/api/v1/", include((nightscout_v1, "nightscout"), namespace="nightscout")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("", include("glucoscope.web.urls")),
]
